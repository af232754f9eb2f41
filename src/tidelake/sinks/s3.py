"""``s3`` sink: batches as raw JSON objects under a prefix — what the reference architectures
write for a crawler/Athena to read (or ``file://`` for a local directory).

Layout (``path: s3://bucket/prefix``)::

    prefix/<topic>/partition=<p>/<first>-<last>.jsonl   rows read from a topic partition,
                                                       named by their first/last offset
    prefix/_flow=<flow>/<seq>.jsonl                     rows without topic provenance, named
                                                       by the flow's batch sequence number
    prefix/_checkpoints/<flow>.json                     {"positions": {...}, "seq": n}

Offsets and sequence numbers are zero-padded to 10 digits so names sort in order.

Delivery: exactly-once *in the set of objects*. The data objects of a batch are written
first, then the checkpoint object (S3 PUTs are atomic; local files are written to a
temporary name and renamed). A crash in between leaves the batch's objects but the old
checkpoint; the restarted flow re-reads from that checkpoint and writes the same batch
again:

- rows without provenance get the same sequence number, hence the same object name, and
  overwrite what was left;
- for a topic partition, the first time this process writes it, objects whose first
  offset lies between the stored position and the end of the new batch are removed
  before the new object is written (they can only be leftovers of the interrupted
  batch: everything committed ends below the stored position). That costs one listing
  of the partition's folder per partition per process start.

Rows whose ``_offset`` is below the stored position of their partition never reach the
sink (the runner fences them). One writer per flow: the checkpoint is one object. A
prefix belongs to one flow: two flows writing the same topic partitions under one prefix
would replace each other's objects.

S3 access: ``pyarrow.fs.S3FileSystem`` with path-style addressing; the endpoint comes from
``TIDELAKE_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:9000``; unset = AWS), credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), the region from
``AWS_REGION`` (default ``us-east-1``). The bucket must exist.

Config::

    sink:
      type: s3
      path: s3://raw/movies          # or file://out/raw (relative to the pipeline file)
      format: jsonl                  # jsonl: one object per line | json: one JSON array
      keep_provenance: false         # also write the _topic/_partition/_offset columns
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import Field, field_validator

from tidelake.errors import ConfigError, ConnectorError
from tidelake.formats import encode_json
from tidelake.runtime.base import PROVENANCE, Checkpoint, ConnectorConfig, FlowContext, Sink
from tidelake.s3_settings import S3Settings

PAD = 10
_OBJECT = re.compile(r"^(\d+)-(\d+)\.(?:jsonl|json)$")


class S3SinkConfig(ConnectorConfig):
    type: Literal["s3"]
    path: str = Field(description="s3://bucket/prefix, or file://dir for a local directory")
    format: Literal["jsonl", "json"] = Field(
        "jsonl", description="jsonl: one JSON object per line; json: one JSON array per object"
    )
    keep_provenance: bool = Field(False, description="also write _topic/_partition/_offset")

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        if v.startswith(("s3://", "s3a://")):
            if not v.split("://", 1)[1].split("/", 1)[0]:
                raise ValueError("s3:// path needs a bucket: s3://bucket/prefix")
            return v
        if v.startswith("file://") and len(v) > len("file://"):
            return v
        raise ValueError("use s3://bucket/prefix or file://path/to/dir")


def s3_filesystem(env: Mapping[str, str] | None = None) -> pafs.S3FileSystem:
    """An S3 client from ``TIDELAKE_S3_ENDPOINT`` and the AWS variables (see ``s3_settings``)."""
    return S3Settings.from_env(env).filesystem(allow_bucket_creation=False)


class S3Sink(Sink):
    Config = S3SinkConfig
    config: S3SinkConfig

    def open(self, ctx: FlowContext) -> None:
        self.flow = ctx.flow
        path = self.config.path
        self.fs: pafs.FileSystem
        if path.startswith("file://"):
            self.fs = pafs.LocalFileSystem()
            self.root = ctx.pipeline.url(path)[len("file://") :].rstrip("/")
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.fs = s3_filesystem()
            self.root = path.split("://", 1)[1].rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.ext = self.config.format
        self.checkpoint_path = f"{self.root}/_checkpoints/{_safe(self.flow)}.json"
        self._recovered: set[str] = set()
        self._positions, self._seq = self._load()

    # -- checkpoint ---------------------------------------------------------------

    def _load(self) -> tuple[Checkpoint, int]:
        try:
            with self.fs.open_input_stream(self.checkpoint_path) as f:
                raw = orjson.loads(f.read())
        except FileNotFoundError:
            return {}, 0
        except OSError as e:
            raise self._error("read the checkpoint", self.checkpoint_path, e) from None
        positions = {str(k): int(v) for k, v in raw.get("positions", {}).items()}
        return positions, int(raw.get("seq", 0))

    def checkpoint(self) -> Checkpoint:
        self._positions, self._seq = self._load()
        return dict(self._positions)

    # -- write --------------------------------------------------------------------

    def write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        try:
            self._write(table, checkpoint)
        except BaseException:
            self._recovered.clear()  # whatever this write left is cleaned up by the next one
            raise

    def _write(self, table: pa.Table, checkpoint: Checkpoint) -> None:
        seq = self._seq
        if table.num_rows:
            provenance = all(c in table.column_names for c in PROVENANCE)
            if provenance:
                for key, rows in _by_partition(table).items():
                    self._put_partition(key, rows)
            else:
                seq += 1
                name = f"{self.root}/_flow={_safe(self.flow)}/{seq:0{PAD}d}.{self.ext}"
                self._put(name, rows=table)
        positions = self._positions | checkpoint
        if positions == self._positions and seq == self._seq:
            return
        body = orjson.dumps({"positions": positions, "seq": seq})
        self._put(self.checkpoint_path, body=body)
        self._positions, self._seq = positions, seq

    def _put_partition(self, key: str, rows: pa.Table) -> None:
        topic, _, partition = key.rpartition("/")
        offsets = rows.column("_offset")
        first, last = pc.min(offsets).as_py(), pc.max(offsets).as_py()
        folder = f"{self.root}/{_safe(topic)}/partition={partition}"
        name = f"{folder}/{first:0{PAD}d}-{last:0{PAD}d}.{self.ext}"
        if key not in self._recovered:
            self._remove_leftovers(folder, self._positions.get(key, 0), last, keep=name)
            self._recovered.add(key)
        self._put(name, rows=rows)

    def _remove_leftovers(self, folder: str, committed: int, last: int, keep: str) -> None:
        """Objects an interrupted write left in ``folder``: first offset in [committed, last]."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError as e:
            raise self._error("list", folder, e) from None
        for info in infos:
            match = _OBJECT.match(info.base_name)
            if match and committed <= int(match.group(1)) <= last and info.path != keep:
                self.fs.delete_file(info.path)

    def _put(self, path: str, rows: pa.Table | None = None, body: bytes = b"") -> None:
        if rows is not None:
            body = self._encode(rows)
        try:
            if self.local:
                folder = path.rsplit("/", 1)[0]
                self.fs.create_dir(folder, recursive=True)
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with self.fs.open_output_stream(tmp) as f:
                    f.write(body)
                self.fs.move(tmp, path)
            else:
                with self.fs.open_output_stream(path) as f:
                    f.write(body)
        except OSError as e:
            raise self._error("write", path, e) from None

    def _encode(self, rows: pa.Table) -> bytes:
        if not self.config.keep_provenance:
            rows = rows.drop_columns([c for c in PROVENANCE if c in rows.column_names])
        lines = encode_json(rows)
        if self.config.format == "json":
            return b"[" + b",".join(lines) + b"]"
        return b"\n".join(lines) + b"\n"

    def _error(self, action: str, path: str, e: OSError) -> ConnectorError:
        where = "s3://" + path if not self.local else path
        hint = (
            "check the directory's permissions"
            if self.local
            else "check that the bucket exists, TIDELAKE_S3_ENDPOINT and the AWS_* credentials"
        )
        return ConnectorError(f"flow {self.flow}: s3 sink could not {action} {where}: {e}; {hint}")


def _by_partition(rows: pa.Table) -> dict[str, pa.Table]:
    """Rows split by ``<topic>/<partition>`` (vectorized: one filter per partition)."""
    keys = pc.binary_join_element_wise(
        pc.cast(rows.column("_topic"), pa.string()),
        pc.cast(rows.column("_partition"), pa.string()),
        "/",
    )
    if keys.null_count:
        raise ConfigError("s3 sink: rows with a null _topic or _partition cannot be named")
    encoded = pc.dictionary_encode(keys).combine_chunks()
    return {
        key: rows.filter(pc.equal(encoded.indices, i))
        for i, key in enumerate(encoded.dictionary.to_pylist())
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", name)


__all__ = ["S3Sink", "S3SinkConfig", "s3_filesystem"]
