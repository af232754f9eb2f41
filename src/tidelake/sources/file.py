"""``file``: CSV, JSON, JSON Lines and Parquet files, local or under an S3 prefix, once or watching.

Position: one key per file (its path relative to the pipeline file, or its
``s3://`` URL) -> rows consumed; a finished file holds its row count. Files are
read in name order, each from the row after its checkpoint, so a restarted
flow neither loses nor repeats rows.

Files must be complete when they become visible: write them elsewhere (or
under a name starting with ``.`` or ``_``, which are ignored) and rename them
in place, or set ``min_age``. A file that changes after it was read is not
re-read. On restart, CSV and JSON files already in the checkpoint are parsed
again up to their position (Parquet seeks by row group).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from tidelake.errors import ConfigError, ConnectorError
from tidelake.formats import decode_json
from tidelake.runtime.base import Batch, Checkpoint, ConnectorConfig, FlowContext, Source
from tidelake.runtime.conform import Conformer
from tidelake.runtime.dead_letters import RAW
from tidelake.s3_settings import S3Settings
from tidelake.vocabulary import pa_type

Format = Literal["csv", "json", "jsonl", "parquet"]
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_BLOCK_BYTES = 4 << 20
_DECODE_LINES = 8192
_REASON = "_reason"
"""Column of ``_jsonl`` rows holding why the line did not decode (null for good rows)."""


def dig(doc: object, path: str) -> object:
    """Follow a dotted path (``data.items``) into parsed JSON; ``""`` is the document itself."""
    for part in filter(None, path.split(".")):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            keys = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
            raise KeyError(f"no {part!r} in the JSON (found: {keys})")
    return doc


def records_table(doc: object, path: str) -> pa.Table:
    """The list of objects at ``path`` as a table (a lone object is one row)."""
    records = dig(doc, path)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise KeyError(
            f"records at {path or 'the root'!r} are a {type(records).__name__}, "
            "not a list of objects"
        )
    return pa.Table.from_pylist(records)


@dataclass
class _Open:
    """A file being read: its key, remaining batches, and a partly returned batch."""

    key: str
    batches: Iterator[pa.RecordBatch]
    pending: pa.RecordBatch | None = None

    def take(self, n: int) -> pa.RecordBatch | None:
        """Up to ``n`` rows, or ``None`` at the end of the file."""
        while self.pending is None or self.pending.num_rows == 0:
            nxt = next(self.batches, None)
            if nxt is None:
                return None
            self.pending = nxt
        out, self.pending = self.pending.slice(0, n), self.pending.slice(n)
        return out


class FileSource(Source):
    """Reads files in chunks of ``max_records`` rows, without loading whole files (except JSON
    arrays, which must be parsed whole)."""

    class Config(ConnectorConfig):
        type: Literal["file"]
        path: str = Field(
            description="file, directory or glob (data/*.csv, data/**/*.parquet), relative to the "
            "pipeline file; or s3://bucket/prefix[/glob]"
        )
        format: Format | None = Field(
            None, description="csv, json (array), jsonl or parquet (default: from the extension)"
        )
        watch: bool = Field(False, description="keep polling for new files instead of finishing")
        poll_interval: float = Field(1.0, gt=0, description="seconds between directory listings")
        min_age: float = Field(
            0.0, ge=0, description="watch: only read files unmodified for this many seconds"
        )
        delimiter: str | None = Field(None, description="CSV delimiter (default , or tab for .tsv)")
        column_types: dict[str, str] = Field(
            {}, description="force column types, e.g. {zip: string, ts: timestamp}"
        )
        records: str = Field(
            "", description="json: dotted path to the records list in each file (root if empty)"
        )
        file_column: str | None = Field(
            None, description="add a column with the file each row came from"
        )
        endpoint: str | None = Field(
            None,
            description="S3 endpoint URL (default: $TIDELAKE_S3_ENDPOINT, unset = AWS); "
            "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        )

    config: Config

    def open(self, ctx: FlowContext, checkpoint: Checkpoint) -> None:
        self.ctx = ctx
        self.positions: dict[str, int] = dict(checkpoint)
        self._known: set[str] = set()
        self._queue: list[str] = []
        self._paths: dict[str, str] = {}
        self._current: _Open | None = None
        self._next_poll = 0.0
        self._types = {k: pa_type(v) for k, v in self.config.column_types.items()}
        self._conform = Conformer(self._types)
        path = self.config.path
        if path.startswith("s3://"):
            bucket_path = path[len("s3://") :]
            settings = S3Settings.from_env(endpoint=self.config.endpoint)
            self.fs: pafs.FileSystem = settings.filesystem()
            self._s3 = True
            self._pattern = bucket_path
        else:
            self.fs = pafs.LocalFileSystem()
            self._s3 = False
            self._pattern = str(ctx.pipeline.path(path))
        self._discover()
        if not self._queue and not self.config.watch:
            raise ConfigError(
                f"file source: no files match {self.config.path!r} "
                f"(looked in {self._pattern}; set watch: true to wait for files)"
            )

    def read(self, max_records: int, timeout: float) -> Batch | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._current is None:
                if self._queue:
                    self._current = self._open(self._queue.pop(0))
                    continue
                if not self.config.watch:
                    return None
                now = time.monotonic()
                if now >= self._next_poll:
                    self._discover()
                    if self._queue:
                        continue
                if now >= deadline:
                    return Batch(pa.table({}))
                time.sleep(max(0.0, min(deadline, self._next_poll) - now))
                continue
            key = self._current.key
            try:
                chunk = self._current.take(max_records)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise self._bad_file(key, e) from e
            if chunk is None:
                self.positions.setdefault(key, 0)
                self._current = None
                continue
            self.positions[key] = self.positions.get(key, 0) + chunk.num_rows
            table = self._undecodable(pa.Table.from_batches([chunk]))
            if self.config.file_column:
                table = table.append_column(
                    self.config.file_column, pa.repeat(pa.scalar(key), table.num_rows)
                )
            csv = self._format(self._paths[key]) == "csv"
            table, rejected, reasons = self._conform(table, text=csv)
            self.ctx.dead_letter(rejected, reasons)
            return Batch(table, {key: self.positions[key]})

    def formats(self) -> set[Format]:
        """The formats of the files found so far."""
        return {f for p in self._paths.values() if (f := self._format(p))}

    def _undecodable(self, table: pa.Table) -> pa.Table:
        """Dead-letter the lines ``_jsonl`` could not decode; the rows that remain."""
        if _REASON not in table.column_names:
            return table
        bad = pc.is_valid(table.column(_REASON))
        rejected = table.filter(bad)
        self.ctx.dead_letter(rejected.select([RAW]), rejected.column(_REASON).to_pylist())
        return table.filter(pc.invert(bad)).drop_columns([RAW, _REASON])

    def _bad_file(self, key: str, e: Exception) -> ConnectorError:
        return ConnectorError(
            f"file source: cannot parse {key}: {e} (if a column's type changes after the first "
            "rows, force it with column_types, e.g. {col: string})"
        )

    def _discover(self) -> None:
        """Queue files not seen yet, in name order."""
        self._next_poll = time.monotonic() + self.config.poll_interval
        found = self._list()
        cutoff = time.time() - self.config.min_age if self.config.min_age else None
        fresh = []
        for key, path in found:
            if key in self._known:
                continue
            if cutoff is not None and self.fs.get_file_info(path).mtime_ns / 1e9 > cutoff:
                continue
            self._known.add(key)
            fresh.append(key)
        self._queue.extend(sorted(fresh))
        self._paths.update(dict(found))

    def _list(self) -> list[tuple[str, str]]:
        """(position key, filesystem path) of every readable file matching ``path``."""
        pattern = self._pattern
        if self._s3:
            base = pattern
            has_glob = any(ch in pattern for ch in "*?[")
            if has_glob:
                base = pattern[: min(pattern.index(ch) for ch in "*?[" if ch in pattern)]
                base = base.rsplit("/", 1)[0]
            infos = self.fs.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
            paths = [i.path for i in infos if i.type == pafs.FileType.File]
            if has_glob:
                paths = [p for p in paths if fnmatch.fnmatch(p, pattern)]
            return [("s3://" + p, p) for p in paths if self._readable(p)]
        if any(ch in pattern for ch in "*?["):
            paths = glob.glob(pattern, recursive=True)
        elif os.path.isdir(pattern):
            paths = [str(p) for p in Path(pattern).rglob("*")]
        else:
            paths = [pattern] if os.path.exists(pattern) else []
        out = []
        for p in paths:
            if os.path.isfile(p) and self._readable(p):
                out.append((self._key(p), os.path.abspath(p)))
        return out

    def _key(self, path: str) -> str:
        absolute = Path(path).resolve()
        try:
            return str(absolute.relative_to(self.ctx.pipeline.base_dir.resolve()))
        except ValueError:
            return str(absolute)

    def _readable(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        if name.startswith((".", "_")):
            return False
        return self.config.format is not None or self._format(path) is not None

    def _format(self, path: str) -> Format | None:
        if self.config.format:
            return self.config.format
        lower = path.lower()
        for ext in _COMPRESSED:
            lower = lower.removesuffix(ext)
        return _EXTENSIONS.get(os.path.splitext(lower)[1])

    def _open(self, key: str) -> _Open:
        path = self._paths[key]
        skip = self.positions.get(key, 0)
        fmt = self._format(path)
        try:
            if fmt == "parquet":
                return _Open(key, self._parquet(path, skip))
            stream = self.fs.open_input_stream(path, compression="detect")
            if fmt == "csv":
                reader: Iterator[pa.RecordBatch] = self._csv(path, stream)
            elif fmt == "jsonl":
                reader = _jsonl(stream)
            else:
                data = stream.read()
                table = self._json(data)
                if table is None:  # JSON Lines in a .json file
                    return _Open(key, _skip(_jsonl(pa.BufferReader(data)), skip))
                if self._types:
                    table = table.cast(
                        pa.schema(
                            [
                                pa.field(f.name, self._types.get(f.name, f.type))
                                for f in table.schema
                            ]
                        )
                    )
                reader = iter(table.to_batches())
        except (pa.ArrowInvalid, pa.ArrowTypeError, orjson.JSONDecodeError, KeyError) as e:
            raise self._bad_file(key, e) from e
        except OSError as e:
            raise ConnectorError(f"file source: cannot open {key}: {e}") from e
        return _Open(key, _skip(reader, skip))

    def _csv(self, path: str, stream: pa.NativeFile) -> Iterator[pa.RecordBatch]:
        """Every column as text: the flow gives each its type and dead-letters the values that
        do not fit it (``runtime.conform``). Arrow's own inference fails the whole file on the
        first value that contradicts what it guessed from the first block."""
        delimiter = self.config.delimiter or ("\t" if ".tsv" in path.lower() else ",")
        read = pacsv.ReadOptions(block_size=_BLOCK_BYTES)
        parse = pacsv.ParseOptions(delimiter=delimiter)
        with self.fs.open_input_stream(path, compression="detect") as head:
            names = pacsv.open_csv(head, read_options=read, parse_options=parse).schema.names
        text = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
        return pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=text)

    def _json(self, data: bytes) -> pa.Table | None:
        """A JSON array, or an object holding the records at ``records`` (or being one);
        None for JSON Lines, which ``_jsonl`` decodes line by line (never Arrow's whole-file
        reader: pyarrow 26.0.1 segfaults on input starting with ``null``)."""
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            if self.config.records or data.lstrip().startswith(b"["):
                raise
            return None  # more than one document: one per line
        return records_table(document, self.config.records)

    def _parquet(self, path: str, skip: int) -> Iterator[pa.RecordBatch]:
        f = pq.ParquetFile(self.fs.open_input_file(path))
        groups: list[int] = []
        first = 0
        for i in range(f.metadata.num_row_groups):
            rows = f.metadata.row_group(i).num_rows
            if first + rows <= skip and not groups:
                first += rows
                continue
            groups.append(i)
        if not groups:
            return iter(())
        return _skip(f.iter_batches(batch_size=65_536, row_groups=groups), skip - first)


def _jsonl(stream: pa.NativeFile) -> Iterator[pa.RecordBatch]:
    """JSON Lines through ``decode_json``, which no line can crash (Arrow's streaming reader
    segfaults on a block starting with ``null`` and fails the file on a type change). Every
    non-blank line stays a row, so positions count lines; a line that does not decode is a
    row holding only its text (``_raw``) and reason (``_reason``), for ``read`` to
    dead-letter."""
    tail = b""
    while block := stream.read(_BLOCK_BYTES):
        block = tail + block
        cut = block.rfind(b"\n") + 1
        tail = block[cut:]
        yield from _decode_lines(block[:cut])
    yield from _decode_lines(tail)


def _decode_lines(text: bytes) -> Iterator[pa.RecordBatch]:
    lines = [line.rstrip(b"\r") for line in text.split(b"\n") if line.strip()]
    for start in range(0, len(lines), _DECODE_LINES):  # a bad line slows only its chunk
        yield from _decode_chunk(lines[start : start + _DECODE_LINES])


def _decode_chunk(lines: list[bytes]) -> Iterator[pa.RecordBatch]:
    table, bad = decode_json(lines)
    if bad:  # rows back in line order, the bad lines as rows of their text and reason
        reasons = dict(bad)
        good = iter(range(table.num_rows))
        at = pa.array([None if i in reasons else next(good) for i in range(len(lines))], pa.int64())
        texts = [line.decode("utf-8", "replace") for line in lines]
        marks = {
            RAW: pa.array([t if i in reasons else None for i, t in enumerate(texts)], pa.string()),
            _REASON: pa.array([reasons.get(i) for i in range(len(lines))], pa.string()),
        }
        table = table.take(at) if table.num_columns else pa.table({})
        for name, column in marks.items():
            table = (
                table.append_column(name, column) if table.num_columns else pa.table({name: column})
            )
    yield from table.to_batches()


def _skip(batches: Iterator[pa.RecordBatch], n: int) -> Iterator[pa.RecordBatch]:
    """Drop the first ``n`` rows."""
    for batch in batches:
        if n >= batch.num_rows:
            n -= batch.num_rows
            continue
        yield batch.slice(n) if n else batch
        n = 0
