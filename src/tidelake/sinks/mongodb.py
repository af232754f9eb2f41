"""Land batches in a MongoDB collection (or any server speaking its wire protocol).

Every document gets a deterministic ``_id``: the declared ``key`` columns (one column: its
value; several: a sub-document), or without a key the row's provenance
``"<topic>/<partition>/<offset>"``. A batch replaces its documents (the last row of a key
wins): ``deleteMany`` of its ids, then an unordered ``insertMany``, so a re-delivered batch
overwrites itself. The flow's positions live in the
``_tidelake_checkpoints`` collection, keyed by pipeline and flow:

- on a server with multi-document transactions (a MongoDB replica set or sharded cluster)
  the rows and the positions commit in one transaction: exactly once;
- elsewhere (a standalone MongoDB, FerretDB) the positions are written after the idempotent
  upserts succeeded: effectively once for keyed (or provenance-keyed) documents.

``sink.transactions`` (auto/always/never) says which; the chosen mode is logged at open.
Rows BSON cannot hold (an integer past 64 bits, a null key) and rows the server refuses go
to the dead-letter topic with the reason.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tidelake import extras
from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import PROVENANCE, Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.sinks.fit import fit, last_per_key

log = logging.getLogger(__name__)
CHECKPOINTS = "_tidelake_checkpoints"


class MongoSinkConfig(ConnectorConfig):
    type: Literal["mongodb"]
    url: str = Field(description="mongodb://host:port/database (the database may be set apart)")
    database: str | None = Field(None, description="database (default: the URL's, else pipeline)")
    collection: str = Field(description="destination collection")
    key: list[str] = Field([], description="columns forming _id (default: provenance)")
    transactions: Literal["auto", "always", "never"] = Field(
        "auto", description="commit rows and positions in one transaction"
    )
    keep_provenance: bool = Field(True, description="store _topic/_partition/_offset fields")


def _bson_safe(table: pa.Table) -> dict[str, str]:
    """Columns to cast so BSON can hold them: unsigned and 64-bit-plus integers to BIGINT,
    decimals to DOUBLE, dates to TIMESTAMP."""
    targets = {}
    for f in table.schema:
        t = f.type
        if pa.types.is_unsigned_integer(t):
            targets[f.name] = "BIGINT"
        elif pa.types.is_decimal(t):
            targets[f.name] = "DOUBLE"
        elif pa.types.is_date(t):
            targets[f.name] = "TIMESTAMP"
        elif pa.types.is_time(t):
            targets[f.name] = "VARCHAR"
    return targets


class MongoSink(Sink):
    Config = MongoSinkConfig
    config: MongoSinkConfig

    def open(self, ctx: FlowContext) -> None:
        extras.load("pymongo", "the mongodb sink")
        import pymongo

        cfg = self.config
        url = ctx.pipeline.url(cfg.url)
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=10_000, tz_aware=True
        )
        try:
            hello = self.client.admin.command("hello")
        except pymongo.errors.PyMongoError as e:
            self.client.close()
            raise ConnectorError(
                f"cannot reach MongoDB at {url.split('@')[-1]}: {e} "
                "(is it running? `tidelake infra up mongodb` starts a local one)"
            ) from e
        name = cfg.database or pymongo.uri_parser.parse_uri(url)["database"] or ctx.pipeline.name
        self.db = self.client[name]
        self.coll = self.db[cfg.collection]
        self.checkpoints = self.db[CHECKPOINTS]
        self.doc_id = f"{ctx.pipeline.name}/{ctx.flow}"
        self.pipeline, self.flow = ctx.pipeline.name, ctx.flow
        self.dead_letter = ctx.dead_letter
        capable = ("setName" in hello or hello.get("msg") == "isdbgrid") and int(
            hello.get("maxWireVersion", 0)
        ) >= 8
        if cfg.transactions == "always" and not capable:
            raise ConfigError(
                f"flow {ctx.flow}: transactions: always, but the server at {url.split('@')[-1]}"
                " has no multi-document transactions (a replica set or sharded cluster has"
                " them); use transactions: auto"
            )
        self.transactional = capable and cfg.transactions != "never"
        log.info(
            "flow %s: mongodb positions %s",
            ctx.flow,
            "in the rows' transaction" if self.transactional else "after idempotent upserts",
        )

    def checkpoint(self) -> Checkpoint:
        return self._load(None)

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        if not self.transactional:
            self._write(table, checkpoint, None, set())
            return
        skip: set[int] = set()  # documents refused inside a transaction abort it: retry without
        while True:
            try:
                with self.client.start_session() as session, session.start_transaction():
                    self._write(table, checkpoint, session, skip)
                return
            except _Refused as r:
                skip |= r.indexes

    def _write(self, table: pa.Table, checkpoint: Checkpoint, session: Any, skip: set[int]) -> None:
        stored = self._load(session)
        if table.num_rows:
            docs, ids = self._documents(table, quiet=bool(skip))
            keep = [n for n in range(len(docs)) if n not in skip]
            if keep:
                # delete + insert rather than replaceOne(upsert): FerretDB v1 leaks a SQLite
                # connection per upsert and stalls once its pool is exhausted. Without a
                # transaction a crash between the two leaves these documents missing until
                # the batch is re-delivered (its positions were not stored).
                self.coll.delete_many({"_id": {"$in": [ids[n] for n in keep]}}, session=session)
                for n in keep:
                    docs[n]["_id"] = ids[n]
                self._insert([docs[n] for n in keep], keep, session)
        self.checkpoints.replace_one(
            {"_id": self.doc_id},
            {
                "pipeline": self.pipeline,
                "flow": self.flow,
                "positions": [  # a list, not an object: position keys hold dots
                    {"key": k, "next": v} for k, v in sorted((stored | checkpoint).items())
                ],
            },
            upsert=True,
            session=session,
        )

    def _load(self, session: Any) -> Checkpoint:
        # find, read to the end, rather than find_one: FerretDB keeps a limit-1 cursor open
        # (holding one of its SQLite connections) until the cursor times out
        docs = list(self.checkpoints.find({"_id": self.doc_id}, session=session))
        doc = docs[0] if docs else None
        return {str(p["key"]): int(p["next"]) for p in (doc or {}).get("positions", [])}

    def _documents(
        self, table: pa.Table, quiet: bool = False
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """(documents, their _id values) for the rows that fit; the rest to dead letters
        (unless ``quiet``: a retried transaction already sent them)."""
        key = self.config.key
        if not key and "_offset" not in table.column_names:
            raise ConfigError(
                f"flow {self.flow}: the mongodb sink needs 'key: [column, ...]' unless its"
                " source is a topic (then _id is the record's topic/partition/offset)"
            )
        table, rejected = fit(table, _bson_safe(table), key)
        for rows, reason in [] if quiet else rejected:
            self.dead_letter(rows, f"mongodb {self.coll.full_name}: {reason}")
        if not table.num_rows:
            return [], []
        if key:
            table = last_per_key(table, key)
            ids = (
                table.column(key[0]).to_pylist() if len(key) == 1 else table.select(key).to_pylist()
            )
        else:
            ids = pc.binary_join_element_wise(
                table.column("_topic"),
                pc.cast(table.column("_partition"), pa.string()),
                pc.cast(table.column("_offset"), pa.string()),
                "/",
            ).to_pylist()
        if not self.config.keep_provenance:
            table = table.drop_columns([c for c in PROVENANCE if c in table.column_names])
        return table.to_pylist(), ids

    def _insert(self, docs: list[dict[str, Any]], origin: list[int], session: Any) -> None:
        """Insert unordered; refused documents go to dead letters (``origin`` maps a document
        back to its row, so a retried transaction leaves it out)."""
        from pymongo.errors import BulkWriteError

        try:
            self.coll.insert_many(docs, ordered=False, session=session)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            if not errors or e.details.get("writeConcernErrors"):
                raise
            bad = pa.Table.from_pylist([docs[err["index"]] for err in errors])
            self.dead_letter(bad, f"mongodb refused the document: {errors[0].get('errmsg')}")
            if session is not None:
                raise _Refused({origin[err["index"]] for err in errors}) from e

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()


class _Refused(Exception):
    """Documents the server refused inside a transaction (which it then aborted)."""

    def __init__(self, indexes: set[int]) -> None:
        self.indexes = indexes
