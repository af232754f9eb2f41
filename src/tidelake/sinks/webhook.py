"""``webhook`` sink: POST each batch as a JSON array to a URL (alerts, chat hooks, tickets).

Delivery: at-least-once on the wire, once for a receiver that honours the idempotency key.
Every batch is first stored in an outbox (the flow's checkpoint file, one SQLite
transaction with nothing else), then POSTed with the header ``Idempotency-Key: <key>``,
then removed from the outbox together with the new checkpoint. A flow killed after the
receiver got a batch but before that commit sends the *same* body with the *same* key on
restart, before reading anything new, so a receiver that keeps the keys it has seen
(Stripe-style) acts on each batch once. Positions advance only after delivery.

Failures: 5xx, 408, 425, 429 and connection errors are retried (``retries``, backoff doubling
from ``backoff`` up to ``backoff_max``, Retry-After wins); when they still fail the flow
restarts from its checkpoint and the outbox is sent again. Any other 4xx is permanent: the
batch's rows go to the dead-letter topic with the status and the start of the answer, and
the flow goes on.

Config::

    sink:
      type: webhook
      url: https://hooks.example.com/reviews
      headers: {Authorization: "Bearer ${HOOK_TOKEN}"}
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import httpx
import pyarrow as pa
from httpx_retries import RetryTransport
from pydantic import Field

from tidelake.formats import encode_json
from tidelake.http_retry import RETRYABLE, retry_policy
from tidelake.runtime.base import Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.checkpoints import CheckpointStore

KEY_HEADER = "Idempotency-Key"


class WebhookSinkConfig(ConnectorConfig):
    type: Literal["webhook"]
    url: str = Field(description="where batches are POSTed")
    headers: dict[str, str] = Field(
        {}, description="request headers; secrets via ${VAR} (Authorization: Bearer ${TOKEN})"
    )
    retries: int = Field(5, ge=0, description="retries of a 5xx/408/425/429/connection error")
    backoff: float = Field(
        0.5, ge=0, description="first retry delay in s, doubled each time (Retry-After wins)"
    )
    backoff_max: float = Field(30.0, ge=0, description="longest retry delay in s")
    timeout: float = Field(30.0, gt=0, description="seconds per request")


class WebhookSink(Sink):
    Config = WebhookSinkConfig
    config: WebhookSinkConfig

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        c = self.config
        self.client = httpx.Client(
            headers={"User-Agent": "tidelake", "Content-Type": "application/json", **c.headers},
            timeout=c.timeout,
            transport=RetryTransport(
                httpx.HTTPTransport(), retry=retry_policy(c.retries, c.backoff, c.backoff_max)
            ),
        )
        self.store = CheckpointStore(ctx.pipeline.state_dir / "checkpoints.db", ctx.owner)
        self.store.conn.execute(
            "CREATE TABLE IF NOT EXISTS webhook_outbox (flow TEXT PRIMARY KEY, key TEXT,"
            " body BLOB, checkpoint TEXT)"
        )
        pending = self.store.conn.execute(
            "SELECT key, body, checkpoint FROM webhook_outbox WHERE flow = ?", (ctx.owner,)
        ).fetchone()
        if pending is not None:
            key, body, checkpoint = pending
            self._deliver(key, body, json.loads(checkpoint))

    def checkpoint(self) -> Checkpoint:
        return self.store.load()

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if not table.num_rows:
            self.store.save(checkpoint)
            return
        body = b"[" + b",".join(encode_json(table)) + b"]"
        positions = json.dumps([self.store.load(), checkpoint], sort_keys=True)
        key = hashlib.sha256(f"{self.ctx.owner}\n{positions}".encode()).hexdigest()
        self.store.conn.execute(
            "INSERT OR REPLACE INTO webhook_outbox VALUES (?, ?, ?, ?)",
            (self.ctx.owner, key, body, json.dumps(checkpoint)),
        )
        self._deliver(key, body, checkpoint)

    def _deliver(self, key: str, body: bytes, checkpoint: Checkpoint) -> None:
        """POST the outbox's batch; on success or permanent refusal, commit its checkpoint."""
        response = self.client.post(self.config.url, content=body, headers={KEY_HEADER: key})
        status = response.status_code
        if status >= 400:
            problem = (
                f"webhook: POST {self.config.url} answered HTTP {status}: {response.text[:200]}"
            )
            if status in RETRYABLE:
                raise ConnectionError(f"{problem} (after {self.config.retries} retries)")
            self.ctx.dead_letter(pa.Table.from_pylist(json.loads(body)), problem)
        conn = self.store.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM webhook_outbox WHERE flow = ?", (self.ctx.owner,))
            self.store.save(checkpoint)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if hasattr(self, "store"):
            self.store.close()
