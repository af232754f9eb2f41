"""Seeded, vectorized randomness for one block of generated records.

Every column of a block draws from its own stream, seeded by
``(seed, kind, block index, column)``; so a block is a pure function of those,
and adding a column to a kind never changes the others. Arrays are built
with ``pyarrow.compute`` (its seeded ``random`` kernel), never per record.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

BLOCK = 8192
"""Records per block. Changing it changes the generated data of every seed."""

_ARANGE = pa.array(range(BLOCK), pa.int64())
_HEX_OFFSETS: dict[int, pa.Buffer] = {}


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (``hash()`` is salted per process, this is not)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def arange(start: int, n: int) -> pa.Array:
    """``start, start+1, ..., start+n-1`` as int64 (n <= BLOCK)."""
    return pc.add(_ARANGE.slice(0, n), pa.scalar(start, pa.int64()))


class Block:
    """The random columns of block ``index``: records ``index*BLOCK ..`` of one kind and seed."""

    def __init__(self, seed: int, kind: str, index: int, ts_us: pa.Array) -> None:
        self.seed, self.kind, self.index = seed, kind, index
        self.n = BLOCK
        self.seq = arange(index * BLOCK, BLOCK)
        self.ts_us = ts_us
        """Deterministic event time of each record (µs since the epoch), for derived columns."""

    def uniform(self, column: str) -> pa.Array:
        """Doubles in [0, 1), one per record."""
        return pc.random(self.n, initializer=derive_seed(self.seed, self.kind, self.index, column))

    def integers(self, column: str, lo: int, hi: int) -> pa.Array:
        """Integers uniform in [lo, hi]."""
        u = pc.multiply(self.uniform(column), float(hi - lo + 1))
        return pc.add(pc.cast(pc.floor(u), pa.int64()), lo)

    def index_into(self, column: str, size: int, skew: float = 1.0) -> pa.Array:
        """Indexes in [0, size); ``skew`` > 1 favours low indexes (popular items)."""
        u = self.uniform(column)
        if skew != 1.0:
            u = pc.power(u, skew)
        return pc.cast(pc.floor(pc.multiply(u, float(size))), pa.int32())

    def choice(
        self, column: str, pool: pa.Array, weights: Sequence[float] | None = None
    ) -> pa.Array:
        """Values of ``pool``, uniformly or with relative ``weights``."""
        if weights is None:
            return pc.take(pool, self.index_into(column, len(pool)))
        return pc.take(pool, self.weighted_index(column, weights))

    def weighted_index(self, column: str, weights: Sequence[float]) -> pa.Array:
        """Indexes in [0, len(weights)) with the given relative weights."""
        u = self.uniform(column)
        total = float(sum(weights))
        idx = pc.cast(pc.multiply(u, 0.0), pa.int32())
        acc = 0.0
        for w in weights[:-1]:
            acc += w / total
            idx = pc.add(idx, pc.cast(pc.greater_equal(u, acc), pa.int32()))
        return idx

    def normal(self, column: str, mean: float = 0.0, std: float = 1.0) -> pa.Array:
        """Gaussian doubles (Box-Muller)."""
        u1 = pc.subtract(1.0, self.uniform(column + ".1"))
        u2 = self.uniform(column + ".2")
        radius = pc.sqrt(pc.multiply(pc.ln(u1), -2.0))
        z = pc.multiply(radius, pc.cos(pc.multiply(u2, 2 * math.pi)))
        return pc.add(pc.multiply(z, std), mean)

    def lognormal(self, column: str, median: float, sigma: float) -> pa.Array:
        """Positive, right-skewed doubles (prices, sizes, counts)."""
        return pc.exp(self.normal(column, math.log(median), sigma))

    def hex_strings(self, column: str, chars: int) -> pa.Array:
        """Random lowercase hex strings of ``chars`` characters, built from one buffer."""
        rng = random.Random(derive_seed(self.seed, self.kind, self.index, column))
        data = rng.randbytes(self.n * chars // 2 + 1).hex()[: self.n * chars].encode()
        offsets = _HEX_OFFSETS.get(chars)
        if offsets is None:
            offsets = pa.array(range(0, chars * (BLOCK + 1), chars), pa.int32()).buffers()[1]
            _HEX_OFFSETS[chars] = offsets
        return pa.StringArray.from_buffers(self.n, offsets, pa.py_buffer(data))

    def uuid4(self, column: str) -> pa.Array:
        """RFC 4122 version-4 UUID strings."""
        h = self.hex_strings(column, 32)
        variant = self.choice(column + ".variant", pa.array(["8", "9", "a", "b"]))

        def part(a: int, b: int) -> pa.Array:
            return pc.utf8_slice_codeunits(h, a, b)

        return pc.binary_join_element_wise(
            part(0, 8),
            part(8, 12),
            pc.binary_join_element_wise("4", part(13, 16), ""),
            pc.binary_join_element_wise(variant, part(17, 20), ""),
            part(20, 32),
            "-",
        )


def ids(prefix: str, numbers: pa.Array, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers, e.g. ``T000000042``."""
    digits = pc.utf8_lpad(pc.cast(numbers, pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def to_int(values: pa.Array) -> pa.Array:
    return pc.cast(pc.floor(values), pa.int64())
