"""Debezium CDC: the PostgreSQL or MySQL connector on Kafka Connect, then its topics as envelopes.

``open`` registers the connector for the database URL's scheme idempotently (``PUT
/connectors/<name>/config``; PostgreSQL: the movies reference's settings; MySQL/MariaDB:
the binlog connector with its schema history in a topic ``<connector>.schema-history`` of
the same Kafka; then ``connector_config`` overrides), waits until the
connector and its task are RUNNING (a FAILED task raises with its trace), and reads
``<topic_prefix>.<schema>.<table>`` from the pipeline's broker through the ``topic``
source's consumer handling (positions are topic offsets stored by the sink, resumed on
every assignment).

Converters are JsonConverter with ``schemas.enable=false``, so each value is the bare
envelope; records with ``{"schema", "payload"}`` (a worker default left on) are
unwrapped too. Rows have the native engine's columns plus the topic provenance
(``_topic``/``_partition``/``_offset``) a table sink fences with. Tombstones are skipped.
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any

import duckdb
import httpx
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict

from tidelake.broker import MessageBatch
from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Source
from tidelake.sources.cdc.envelope import SCHEMA, default_name
from tidelake.sources.topic import TopicSource, TopicSourceConfig

if TYPE_CHECKING:
    from tidelake.sources.cdc import CdcConfig

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
MYSQL_CONNECTOR_CLASS = "io.debezium.connector.mysql.MySqlConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"


def connector_name(cfg: CdcConfig, slot: str) -> str:
    """The connector's name in Kafka Connect: the configured one, else the slot's."""
    return cfg.connector or slot.replace("_", "-")


def connector_config(
    cfg: CdcConfig, database_url: str, slot: str, publication: str
) -> dict[str, str]:
    """The connector's settings: the movies reference's keys, then the user's overrides."""
    info = conninfo_to_dict(database_url)
    tables = [f"{s}.{t}" for s, t in cfg.qualified_tables("public")]
    settings = {
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        "database.hostname": str(info.get("host") or "127.0.0.1"),
        "database.port": str(info.get("port") or 5432),
        "database.user": str(info.get("user") or "postgres"),
        "database.password": str(info.get("password") or ""),
        "database.dbname": str(info.get("dbname") or "postgres"),
        "topic.prefix": cfg.topic_prefix,
        "plugin.name": "pgoutput",
        "table.include.list": ",".join(tables),
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial" if cfg.snapshot == "initial" else "no_data",
    }
    return settings | _common(cfg) | cfg.connector_config


def mysql_connector_config(
    cfg: CdcConfig, database_url: str, name: str, bootstrap: str
) -> dict[str, str]:
    """The MySQL connector's settings (it reads MariaDB too), then the user's overrides.

    Its replica id is derived from the connector's name (two readers with one id would
    disconnect each other) and differs from the native engine's."""
    from tidelake.db import mysql_settings

    server = mysql_settings(database_url)
    tables = [f"{s}.{t}" for s, t in cfg.qualified_tables(str(server["database"] or ""))]
    settings = {
        "connector.class": MYSQL_CONNECTOR_CLASS,
        "tasks.max": "1",
        "database.hostname": str(server["host"]),
        "database.port": str(server["port"]),
        "database.user": str(server["user"]),
        "database.password": str(server["password"]),
        "database.server.id": str(0x20000000 | zlib.crc32(name.encode()) & 0x0FFFFFFF),
        "database.include.list": ",".join(sorted({t.split(".")[0] for t in tables})),
        "topic.prefix": cfg.topic_prefix,
        "table.include.list": ",".join(tables),
        "schema.history.internal.kafka.bootstrap.servers": bootstrap,
        "schema.history.internal.kafka.topic": f"{name}.schema-history",
        "snapshot.mode": "initial" if cfg.snapshot == "initial" else "no_data",
    }
    return settings | _common(cfg) | cfg.connector_config


def _common(cfg: CdcConfig) -> dict[str, str]:
    """Settings of every engine's connector: bare JSON envelopes, the decimal mode."""
    return {
        "decimal.handling.mode": cfg.decimal_handling,
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "false",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "false",
    }


class ConnectClient:
    """The few Kafka Connect REST calls the engine needs, with actionable errors."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ConnectorError(
                f"cdc: Kafka Connect at {self.url} is not reachable ({e}); start it with "
                "`tidelake infra up connect` or set the source's 'connect_url'"
            ) from e

    def put_config(self, name: str, config: dict[str, str]) -> None:
        resp = self._call("PUT", f"/connectors/{name}/config", json=config)
        if resp.status_code >= 400:
            hint = ""
            if "Failed to find any class that implements Connector" in resp.text:
                hint = (
                    f" (the worker lacks {config.get('connector.class')}: a worker started by"
                    " `tidelake infra up connect` loads Debezium's PostgreSQL and MySQL"
                    " connectors; restart an older one with `tidelake infra down connect`)"
                )
            raise ConnectorError(
                f"cdc: Kafka Connect refused connector {name!r}: {resp.status_code} "
                f"{resp.text}{hint}"
            )

    def status(self, name: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/connectors/{name}/status")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def restart_failed(self, name: str) -> None:
        self._call(
            "POST",
            f"/connectors/{name}/restart",
            params={"includeTasks": "true", "onlyFailed": "true"},
        )

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/connectors/{name}")

    def retire(self, name: str, timeout: float = 60.0) -> bool:
        """Stop ``name``, reset its source offsets and delete it; False if it did not exist.

        Deleting alone would keep the offsets in Connect's offsets topic, and a connector
        registered later under the same name would resume there instead of snapshotting.
        """
        stop = self._call("PUT", f"/connectors/{name}/stop")
        if stop.status_code == 404:
            return False
        stop.raise_for_status()
        deadline = time.monotonic() + timeout
        while True:
            state = (self.status(name) or {}).get("connector", {}).get("state")
            resp = self._call("DELETE", f"/connectors/{name}/offsets")
            if state == "STOPPED" and resp.status_code < 400:
                break
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"cdc: could not reset connector {name!r}'s offsets within {timeout:g}s "
                    f"(state {state}): {resp.status_code} {resp.text}"
                )
            time.sleep(0.5)
        self._call("DELETE", f"/connectors/{name}").raise_for_status()
        while self.status(name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker applies the deletion asynchronously
        return True

    def wait_running(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.status(name)
            if last:
                states = [last["connector"]["state"]] + [t["state"] for t in last.get("tasks", [])]
                failed = [t for t in last.get("tasks", []) if t["state"] == "FAILED"]
                if last["connector"]["state"] == "FAILED" or failed:
                    trace = (failed[0] if failed else last["connector"]).get("trace", "")
                    raise ConnectorError(
                        f"cdc: Debezium connector {name!r} failed: {trace.strip()[:4000]}"
                    )
                if last.get("tasks") and all(s == "RUNNING" for s in states):
                    return
            time.sleep(0.5)
        raise ConnectorError(
            f"cdc: Debezium connector {name!r} is not RUNNING after {timeout:g}s "
            f"(last status: {last}); see the Connect worker's log"
        )

    def close(self) -> None:
        self.http.close()


class _EnvelopeTopics(TopicSource):
    """The topic source's consumer handling; values decoded into envelope columns."""

    def _decode(self, msgs: MessageBatch) -> pa.Table:
        return decode_envelopes(msgs, self.ctx)


def decode_envelopes(msgs: MessageBatch, ctx: FlowContext | None = None) -> pa.Table:
    """Debezium JSON records -> envelope rows + provenance, vectorized in DuckDB.

    Tombstones are skipped; records that are not JSON go to the dead-letter topic.
    """
    if not len(msgs):
        return _empty()
    raw = pa.table(
        {
            "k": pa.array(msgs.keys, pa.binary()).cast(pa.string()),
            "v": pa.array(msgs.values, pa.binary()).cast(pa.string()),
            "_topic": pa.array(msgs.topics, pa.string()),
            "_partition": pa.array(msgs.partitions, pa.int32()),
            "_offset": pa.array(msgs.offsets, pa.int64()),
        }
    )
    con = duckdb.connect()
    try:
        con.register("raw", raw)
        bad = con.sql(
            "SELECT _topic, _partition, _offset, v AS value FROM raw"
            " WHERE v IS NOT NULL AND NOT coalesce(json_valid(v), false)"
        ).to_arrow_table()
        if bad.num_rows and ctx is not None:
            ctx.dead_letter(bad, "not a JSON Debezium envelope")

        def part(name: str) -> str:
            return f"nullif(CAST(json_extract(e, '$.{name}') AS VARCHAR), 'null')"

        table = con.sql(
            "WITH j AS (SELECT *, CASE WHEN json_exists(v, '$.payload') AND NOT"
            " json_exists(v, '$.op') THEN json_extract(v, '$.payload') ELSE CAST(v AS JSON) END"
            " AS e, CASE WHEN json_valid(k) AND json_exists(k, '$.schema')"
            " AND json_exists(k, '$.payload') THEN CAST(json_extract(k, '$.payload') AS VARCHAR)"
            " ELSE k END AS key"
            " FROM raw WHERE v IS NOT NULL AND json_valid(v))"
            " SELECT _topic AS topic, CAST(key AS VARCHAR) AS key,"
            f" {part('before')} AS before, {part('after')} AS after,"
            " json_extract_string(e, '$.op') AS op,"
            " TRY_CAST(json_extract(e, '$.ts_ms') AS BIGINT) AS ts_ms,"
            f" {part('source')} AS source, _topic, _partition, _offset FROM j"
        ).to_arrow_table()
    finally:
        con.close()
    return table.cast(_SCHEMA)


_SCHEMA = pa.schema(
    list(SCHEMA) + [("_topic", pa.string()), ("_partition", pa.int32()), ("_offset", pa.int64())]
)


def _empty() -> pa.Table:
    return _SCHEMA.empty_table()


class DebeziumCdc(Source):
    """The ``debezium`` engine of the ``cdc`` source."""

    def __init__(self, config: CdcConfig) -> None:
        super().__init__(config)
        self.config: CdcConfig = config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        cfg = self.config
        url = ctx.pipeline.url(cfg.database or ctx.pipeline.database)
        mysql = url.startswith(("mysql://", "mariadb://"))
        if not mysql and not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"flow {ctx.flow}: cdc engine 'debezium' needs a PostgreSQL or MySQL/MariaDB "
                "database URL (postgresql://... or mysql://...)"
            )
        if not ctx.broker.url.startswith("kafka://"):
            raise ConfigError(
                f"flow {ctx.flow}: cdc engine 'debezium' reads the topics Kafka Connect writes: "
                "set the pipeline's 'broker: kafka://host:port' (the broker Connect uses)"
            )
        slot = cfg.slot or default_name(ctx.pipeline.name, ctx.flow)
        self.name = connector_name(cfg, slot)
        if mysql:
            bootstrap = ctx.broker.url.removeprefix("kafka://")
            self.settings = mysql_connector_config(cfg, url, self.name, bootstrap)
        else:
            self.settings = connector_config(cfg, url, slot, cfg.publication or slot)
        self.client = ConnectClient(cfg.connect_url)
        self.client.put_config(self.name, self.settings)
        try:
            self.client.wait_running(self.name, cfg.connector_timeout)
        except ConnectorError:
            self.client.restart_failed(self.name)  # one retry: e.g. a slot still held
            self.client.wait_running(self.name, cfg.connector_timeout)
        prefix = self.settings["topic.prefix"]
        tables = self.settings["table.include.list"].split(",")
        self.topics = [f"{prefix}.{t}" for t in tables]
        for topic in self.topics:
            ctx.broker.create_topic(topic)
        self.reader = _EnvelopeTopics(
            TopicSourceConfig(type="topic", topic=self.topics, group=self.name)
        )
        self.reader.open(ctx, checkpoint)

    def read(self, max_records: int, timeout: float) -> Batch:
        return self.reader.read(max_records, timeout)

    def committed(self, checkpoint: Checkpoint) -> None:
        self.reader.committed(checkpoint)

    def close(self) -> None:
        if hasattr(self, "reader"):
            self.reader.close()
        if hasattr(self, "client"):
            self.client.close()


__all__ = [
    "ConnectClient",
    "DebeziumCdc",
    "connector_config",
    "connector_name",
    "mysql_connector_config",
    "decode_envelopes",
]
