"""Source positions, provenance fencing and partition epochs: the one implementation.

A checkpoint maps ``<topic>/<partition>`` to the next offset to read (plus keys of other
sources and of transforms). Two rules keep several writers of one flow exactly once:

- **Fencing** (:func:`fence`): rows whose provenance (``_topic``, ``_partition``,
  ``_offset``) lies below the stored position of their partition already landed; the
  runner drops them before transforms run, so no sink has to.
- **Epochs** (:func:`claim`, :func:`merge`): when a worker is assigned a partition it
  *claims* it in the sink's store, which bumps ``<topic>/<partition>#epoch``. Every
  commit carries the epochs the worker claimed and the sink refuses it (:class:`Fenced`)
  when the store holds a newer epoch for any of them: the partition was given to another
  worker since (this one was paused past its session timeout, or cut off), so its batch
  is stale. The sink checks this inside the transaction that stores rows and positions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from tidelake.errors import Fenced
from tidelake.vocabulary import PROVENANCE, Checkpoint

__all__ = ["Fenced", "claim", "epoch_key", "fence", "merge"]

log = logging.getLogger(__name__)

EPOCH = "#epoch"


def epoch_key(key: str) -> str:
    return key + EPOCH


def is_partition(key: str) -> bool:
    """``<topic>/<partition>``: a position a consumer group splits between workers."""
    return key.rpartition("/")[2].isdigit()


def positions_only(checkpoint: Checkpoint) -> Checkpoint:
    return {k: v for k, v in checkpoint.items() if not k.endswith(EPOCH)}


def epochs_of(checkpoint: Checkpoint) -> Checkpoint:
    return {k: v for k, v in checkpoint.items() if k.endswith(EPOCH)}


def claim(stored: Checkpoint, keys: Iterable[str]) -> Checkpoint:
    """The next epoch of each partition in ``keys``, to store before reading them."""
    return {epoch_key(k): stored.get(epoch_key(k), 0) + 1 for k in keys}


def merge(stored: Checkpoint, new: Checkpoint, flow: str) -> Checkpoint:
    """``stored`` updated with the keys of ``new``, if ``new``'s epochs are all current.

    Raises :class:`Fenced` when another worker claimed one of ``new``'s partitions since
    (a partition without an epoch in ``new`` counts as epoch 0): nothing of the commit may
    land. Keys ``new`` does not carry (other workers' partitions) are kept as stored."""
    carried = {k for k in new if is_partition(k)} | {k.removesuffix(EPOCH) for k in epochs_of(new)}
    stale = sorted(k for k in carried if stored.get(epoch_key(k), 0) > new.get(epoch_key(k), 0))
    if stale:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise Fenced(
            f"flow {flow}: refused a stale batch: another worker took over partition(s) "
            f"{', '.join(stale[:3])}{more} while this one was not heard from (paused or cut "
            "off past its session timeout); nothing of the batch landed, the worker rejoins"
        )
    return stored | new


def fence(rows: pa.Table, stored: Checkpoint) -> pa.Table:
    """Drop rows whose ``_offset`` is below the stored position of their topic/partition."""
    if not stored or not rows.num_rows or not all(c in rows.column_names for c in PROVENANCE):
        return rows
    offsets = pc.cast(rows.column("_offset"), pa.int64())
    where = rows.select(["_topic", "_partition"]).append_column("_offset", offsets)
    lowest = where.group_by(["_topic", "_partition"]).aggregate([("_offset", "min")])
    if all(
        low is None or low >= stored.get(f"{topic}/{partition}", -1)
        for topic, partition, low in zip(*lowest.to_pydict().values(), strict=True)
    ):  # the usual case: nothing below its floor, no per-row filter needed
        return rows
    keys = pc.binary_join_element_wise(
        pc.cast(rows.column("_topic"), pa.string()),
        pc.cast(rows.column("_partition"), pa.string()),
        "/",
    )
    encoded = pc.dictionary_encode(keys).combine_chunks()
    floors = pa.array([stored.get(k, -1) for k in encoded.dictionary.to_pylist()], pa.int64())
    floor = pc.take(floors, encoded.indices)
    keep = pc.fill_null(pc.greater_equal(offsets, floor), True)
    kept = rows.filter(keep)
    if kept.num_rows < rows.num_rows:
        log.info("fenced %d already-landed rows", rows.num_rows - kept.num_rows)
    return kept
