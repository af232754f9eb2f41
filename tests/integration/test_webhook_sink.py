"""Negative reviews routed to an ``alerts`` topic and POSTed to a local receiver that fails
its first attempts, refuses one batch for good, and sees the flow killed -9 right after it
received a batch: every alert arrives once by idempotency key or is a dead letter, none lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from killing import Proc, start, stderr_tail

from tidelake.broker import connect
from tidelake.config import load
from tidelake.runtime import dead_letters

pytestmark = pytest.mark.integration
REVIEWS = 400
FAIL_FIRST = 3
KILL_AT_BATCH = 3
POISON_ID = 101
NEGATIVE = ["nul", "cassé", "déçu", "horrible"]
"""A negative lexicon: two of its words make a review an alert, whatever its rating."""

PIPELINE = """
name: hooks
flows:
  route:
    source: {type: file, path: reviews.jsonl}
    transforms:
      - {type: derive, columns: {negative_words: "len(regexp_extract_all(lower(text), '%s'))"}}
      - {type: filter, where: "rating <= 2 OR negative_words >= 2"}
    sink: {type: topic, topic: alerts}
  alert:
    source: {type: topic, topic: alerts}
    sink: {type: webhook, url: "http://127.0.0.1:%d/hook", backoff: 0.05, backoff_max: 0.2}
    batch: {size: 25, max_latency: 0.3}
"""


class Receiver(ThreadingHTTPServer):
    """Answers 503 to the first attempts, 422 to a batch holding the poison review, keeps
    batches by Idempotency-Key, and kills the flow after it received batch KILL_AT_BATCH."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.attempts = 0
        self.batches: dict[str, list[dict[str, Any]]] = {}
        self.repeats = 0
        self.proc: Proc | None = None
        self.killed = threading.Event()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        s = self.server
        with s.lock:
            s.attempts += 1
            if s.attempts <= FAIL_FIRST:
                return self._answer(503)
            if any(r["id"] == POISON_ID for r in rows):
                return self._answer(422)
            if key in s.batches:
                assert s.batches[key] == rows, "same key, other rows"
                s.repeats += 1
            s.batches[key] = rows
            if len(s.batches) == KILL_AT_BATCH and not s.killed.is_set() and s.proc:
                os.kill(s.proc.pid, signal.SIGKILL)  # received, not yet committed by the flow
                s.killed.set()
                return None
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _reviews() -> list[dict[str, Any]]:
    words = ["très bien", "nul et cassé", "déçu, horrible", "correct", "parfait"]
    return [
        {"id": i, "product": f"p{i % 7}", "rating": 1 + (i * 7) % 5, "text": words[i % 5]}
        for i in range(REVIEWS)
    ]


def test_every_alert_is_delivered_once_or_dead_lettered(tmp_path: Path) -> None:
    reviews = _reviews()
    (tmp_path / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in reviews))
    expected = {
        r["id"]
        for r in reviews
        if r["rating"] <= 2 or sum(r["text"].count(w) for w in NEGATIVE) >= 2
    }
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    lexicon = "|".join(NEGATIVE)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE % (lexicon, receiver.server_address[1]))
    pipeline = load(tmp_path / "pipeline.yaml")
    try:
        receiver.proc = start(tmp_path / "pipeline.yaml")
        assert receiver.killed.wait(120), stderr_tail(receiver.proc)
        receiver.proc.wait(30)
        proc = start(tmp_path / "pipeline.yaml")
        letters: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            delivered = [r["id"] for rows in receiver.batches.values() for r in rows]
            broker = connect(pipeline.url(pipeline.broker))
            try:
                topic = dead_letters.dead_letter_topic(pipeline, "alert")
                letters = (
                    [x.value for x in dead_letters.read(broker, topic)]
                    if topic in broker.topics()
                    else []
                )
            finally:
                broker.close()
            if len(delivered) + len(letters) >= len(expected):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        receiver.shutdown()
    refused = [letter["payload"]["id"] for letter in letters]
    assert POISON_ID in refused, (len(delivered), receiver.attempts, stderr_tail(proc))
    assert all("HTTP 422" in letter["reason"] for letter in letters)
    assert sorted(delivered + refused) == sorted(expected)  # each once, none lost
    assert receiver.repeats >= 1  # the batch received before the kill came again, same key
    assert receiver.attempts > len(receiver.batches) + FAIL_FIRST
