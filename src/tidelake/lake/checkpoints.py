"""Flow checkpoints stored in Iceberg snapshot summaries (docs/architecture.md, principle 1).

Every snapshot tidelake commits carries, for every flow that ever wrote the
table, a summary property ``tidelake.checkpoint.<flow>`` holding a JSON
``StoredCheckpoint``. Writers copy the properties of the previous snapshot
forward (compaction does too), so the current snapshot alone answers "where is
flow F?" — snapshot expiry can never drop a flow's position, and reading it is
O(1). Snapshots from foreign writers (Spark, a notebook) lack the properties;
readers then walk back the ancestry to the newest snapshot that has them.

A write that fans out over several tables commits to each table in turn (Iceberg
has no multi-table commit here), so each entry also says whether it was the
last commit of its write (``last``) and which checkpoint the flow held before
the write (``base``). The flow's checkpoint is then: among the entries with the
highest ``seq`` in any of its tables, ``positions`` if one of them is ``last``,
else ``base`` — a write interrupted half-way is re-read as a whole, and the
tables it already reached drop the re-read rows by their provenance offsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import ancestors_of

from tidelake.runtime.base import Checkpoint

PREFIX = "tidelake.checkpoint."
WRITER = "tidelake.flow"
MAINTENANCE = "tidelake.maintenance"


@dataclass(frozen=True)
class StoredCheckpoint:
    """One flow's entry in one table's snapshot summary."""

    seq: int
    positions: Checkpoint
    base: Checkpoint = field(default_factory=dict)
    last: bool = True

    def to_json(self) -> str:
        return orjson.dumps(
            {"seq": self.seq, "positions": self.positions, "base": self.base, "last": self.last}
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> StoredCheckpoint:
        raw = orjson.loads(text)
        return cls(
            seq=int(raw["seq"]),
            positions={str(k): int(v) for k, v in raw["positions"].items()},
            base={str(k): int(v) for k, v in raw.get("base", {}).items()},
            last=bool(raw.get("last", True)),
        )


def carried(metadata: TableMetadata) -> dict[str, str]:
    """All flows' checkpoint properties as of the current snapshot, to copy into the next one."""
    for snapshot in ancestors_of(metadata.current_snapshot(), metadata):
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        found = {k: v for k, v in props.items() if k.startswith(PREFIX)}
        if found:
            return found
    return {}


def stored(metadata: TableMetadata, flow: str) -> StoredCheckpoint | None:
    """The flow's entry as of the current snapshot (None if the flow never wrote this table)."""
    text = carried(metadata).get(PREFIX + flow)
    return StoredCheckpoint.from_json(text) if text else None


def resolve(entries: Iterable[StoredCheckpoint]) -> tuple[int, Checkpoint]:
    """The flow's committed checkpoint from its entries in all its tables, and the highest seq."""
    entries = list(entries)
    if not entries:
        return 0, {}
    top = max(e.seq for e in entries)
    newest = [e for e in entries if e.seq == top]
    done = next((e for e in newest if e.last), None)
    return top, dict(done.positions if done else newest[0].base)
