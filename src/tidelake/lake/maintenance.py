"""Keeping a lake table fast after days of one-second commits.

- ``compact``: per partition, small data files are read and rewritten as a few
  large ones in ONE overwrite snapshot (old files removed, new files added
  atomically). Row multiset is preserved (checked before commit: the rewrite
  must hold exactly as many rows as the files it replaces), and the flows'
  checkpoints are copied into the compaction snapshot.
- ``expire``: snapshots beyond the newest ``keep`` or older than ``max_age`` are
  removed from the metadata (branch and tag heads never are), then the data
  files, manifests and manifest lists only they referenced are deleted.
- Manifest merging is Iceberg's own: tables are created with
  ``commit.manifest-merge.enabled`` so appends fold small manifests together.

``Maintainer`` runs both from the lake sink every N commits or T seconds, in the
writer's thread — maintenance never races the sink's own commits. Run on demand
while a flow writes, a losing commit is retried on the fresh table state.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, ManifestFile
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update.snapshot import ExpireSnapshots

from tidelake.lake import checkpoints, pyiceberg_internals
from tidelake.lake.catalog import OWN_RETRIES, guard
from tidelake.lake.pyiceberg_internals import Transaction

log = logging.getLogger(__name__)
_RETRIES = 4


class MaintenancePolicy(BaseModel):
    """``maintenance:`` of a lake sink."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    compact_every: int = Field(
        default=100, gt=0, description="compact after this many commits to a table"
    )
    expire_every: int = Field(
        default=100, gt=0, description="expire snapshots after this many commits"
    )
    interval: float | None = Field(
        default=None, gt=0, description="also run after this many seconds"
    )
    target_file_size: int = Field(
        default=128 * 2**20, gt=0, description="bytes (in-memory Arrow size)"
    )
    min_files: int = Field(
        default=4, ge=2, description="compact a partition at this many small files"
    )
    keep_snapshots: int = Field(default=100, ge=1, description="keep at most this many snapshots")
    max_snapshot_age: float = Field(
        default=7 * 86400, gt=0, description="expire snapshots older than (s)"
    )
    manifest_merge_min_count: int = Field(
        default=16, ge=2, description="merge manifests beyond this count"
    )

    def table_properties(self) -> dict[str, str]:
        """Iceberg table properties set at creation so writes stay cheap."""
        return {
            TableProperties.MANIFEST_MERGE_ENABLED: "true",
            TableProperties.MANIFEST_MIN_MERGE_COUNT: str(self.manifest_merge_min_count),
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: str(self.target_file_size),
            TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED: "true",
            TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: "10",
        } | OWN_RETRIES


@dataclass(frozen=True)
class CompactionResult:
    partitions: int
    files_removed: int
    files_added: int
    rows: int
    snapshot_id: int | None


@dataclass(frozen=True)
class ExpiryResult:
    snapshots_expired: int
    files_deleted: int


def compact(
    table: Table, target_file_size: int = 128 * 2**20, min_files: int = 4
) -> CompactionResult:
    """Rewrite each partition's small files (< 3/4 of the target) into large ones, atomically."""
    guard(table)
    for attempt in range(_RETRIES):
        try:
            return _compact_once(table, target_file_size, min_files)
        except CommitFailedException:
            if attempt == _RETRIES - 1:
                raise
            table.refresh()
    raise AssertionError("unreachable")


def _compact_once(table: Table, target_file_size: int, min_files: int) -> CompactionResult:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return CompactionResult(0, 0, 0, 0, None)
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    if any(t.delete_files for t in tasks):
        log.info("compaction of %s skipped: the table has delete files", table.name())
        return CompactionResult(0, 0, 0, 0, None)
    groups: dict[tuple[int, object], list[DataFile]] = defaultdict(list)
    for t in tasks:
        if t.file.file_size_in_bytes < target_file_size * 3 // 4:
            groups[(t.file.spec_id, t.file.partition)].append(t.file)
    chosen = [files for files in groups.values() if len(files) >= min_files]
    if not chosen:
        return CompactionResult(0, 0, 0, 0, None)

    tx = Transaction(table)
    meta = tx.table_metadata
    props = checkpoints.carried(meta) | {checkpoints.MAINTENANCE: "compact"}
    written: list[DataFile] = []
    removed = rows = 0
    try:
        with tx.update_snapshot(snapshot_properties=props).overwrite() as rewrite:
            for files in chosen:
                data = ArrowScan(meta, table.io, meta.schema(), AlwaysTrue()).to_table(
                    [FileScanTask(f) for f in files]
                )
                expected = sum(f.record_count for f in files)
                new_files = pyiceberg_internals.data_files(meta, data, table.io)
                written += new_files
                if data.num_rows != expected or sum(f.record_count for f in new_files) != expected:
                    raise RuntimeError(
                        f"compaction of {table.name()} read {data.num_rows} rows from files "
                        f"holding {expected}; nothing was committed"
                    )
                for f in files:
                    rewrite.delete_data_file(f)
                for f in new_files:
                    rewrite.append_data_file(f)
                removed += len(files)
                rows += expected
        tx.commit_transaction()
    except BaseException:
        for f in written:
            table.io.delete(f.file_path)
        raise
    current = table.current_snapshot()
    return CompactionResult(
        len(chosen), removed, len(written), rows, current.snapshot_id if current else None
    )


def expire(
    table: Table,
    keep: int = 100,
    max_age: timedelta = timedelta(days=7),
    now: datetime | None = None,
) -> ExpiryResult:
    """Drop snapshots not among the newest ``keep`` or older than ``max_age``; delete their files.

    The current snapshot and every branch/tag head are always kept. Time travel
    to an expired snapshot is no longer possible afterwards.
    """
    meta = table.metadata
    protected = {ref.snapshot_id for ref in meta.refs.values()}
    cutoff_ms = int(((now or datetime.now(UTC)) - max_age).timestamp() * 1000)
    newest_first = sorted(
        meta.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0), reverse=True
    )
    doomed = [
        s
        for i, s in enumerate(newest_first)
        if s.snapshot_id not in protected and (i >= keep or s.timestamp_ms < cutoff_ms)
    ]
    if not doomed:
        return ExpiryResult(0, 0)
    doomed_ids = {s.snapshot_id for s in doomed}
    kept = [s for s in meta.snapshots if s.snapshot_id not in doomed_ids]
    before = _referenced(table, doomed)
    ExpireSnapshots(Transaction(table, autocommit=True)).by_ids(sorted(doomed_ids)).commit()
    after = _referenced(table, kept)
    orphans = before - after
    for path in orphans:
        table.io.delete(path)
    return ExpiryResult(len(doomed), len(orphans))


_MANIFEST_CACHE = 8192
_manifest_files: dict[str, frozenset[str]] = {}
_manifest_lists: dict[str, tuple[ManifestFile, ...]] = {}


def _manifests_of(table: Table, snapshot: Snapshot) -> tuple[ManifestFile, ...]:
    """Manifest lists and manifests never change once written: what they hold is cached."""
    listed = _manifest_lists.get(snapshot.manifest_list)
    if listed is None:
        listed = _manifest_lists[snapshot.manifest_list] = tuple(snapshot.manifests(table.io))
    return listed


def _files_of(table: Table, manifest: ManifestFile) -> frozenset[str]:
    files = _manifest_files.get(manifest.manifest_path)
    if files is None:
        entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        files = frozenset(e.data_file.file_path for e in entries)
        _manifest_files[manifest.manifest_path] = files
    return files


def _referenced(table: Table, snapshots: list[Snapshot]) -> set[str]:
    """Manifest lists, manifests and live data files the snapshots reference."""
    for cache in (_manifest_files, _manifest_lists):
        while len(cache) > _MANIFEST_CACHE:
            del cache[next(iter(cache))]
    paths: set[str] = set()
    manifests: dict[str, ManifestFile] = {}
    for s in snapshots:
        paths.add(s.manifest_list)
        for m in _manifests_of(table, s):
            manifests.setdefault(m.manifest_path, m)
    for path, m in manifests.items():
        paths.add(path)
        paths |= _files_of(table, m)
    return paths


class Maintainer:
    """Decides when a sink's table is due for compaction and expiry, and runs them."""

    def __init__(self, policy: MaintenancePolicy) -> None:
        self.policy = policy
        self._commits: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}

    def after_commit(self, table: Table) -> None:
        p = self.policy
        if not p.enabled:
            return
        name = ".".join(table.name())
        self._commits[name] += 1
        n = self._commits[name]
        now = time.monotonic()
        overdue = p.interval is not None and now - self._last.setdefault(name, now) >= p.interval
        if overdue:
            self._last[name] = now
        if n % p.compact_every == 0 or overdue:
            compact(table, p.target_file_size, p.min_files)
        if n % p.expire_every == 0 or overdue:
            expire(table, p.keep_snapshots, timedelta(seconds=p.max_snapshot_age))
