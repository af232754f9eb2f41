"""What every system computes, in plain Python (stdlib + orjson): the canonical record.

Imported by the peer workers (each in its own venv, without tidelake) and by the harness
for the reference result. Keep it dependency-free.

Canonical output record (W1/W2), one per input record whose age > 13:

    id            input id
    full_name     name.last + ' ' + name.first
    email_domain  the part of email after the first '@'
    email_hmac    hex HMAC-SHA256(key, email as UTF-8)
    phone_hmac    hex HMAC-SHA256(key, phone as UTF-8)
    age           whole years from the calendar date of dob.date (first 10 chars, UTC)
                  to REF_DATE
    country       location.country

W3 (windowed), over the same input, every record (no age filter):

    age           as in W1: age_of(dob.date)
    event time    ts ("2024-01-01T00:00:00Z", +1 s per record, in order in its 1 partition)
    window        1-minute tumbling event-time windows aligned to 2024-01-01T00:00Z
                  (= minute aligned), zero allowed lateness, grouped by location.country
    output        one JSON record per closed (window, country) to an output topic:
                  {"window_start": epoch seconds (int, minute aligned), "country": str,
                   "count": int, "avg_age": float}

A window [s, s+60) is closed by the input when s + 60 <= the input's max ts (a record at or
after its end exists). The canonical result has only those windows: a system that flushes its
open windows at the end of the input emits extra rows for the last, partial minute, which the
verifier drops; a system that never emits that last window is equally right. Checksum: count
and the order-independent sum of a 64-bit hash of (window_start, country, count,
round(avg_age, 3)) (`WindowChecksum`), where avg_age is first snapped to the nearest
sum/count with an integer sum (ages are whole years), so float noise from how a system
accumulates its mean cannot flip the third decimal.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import resource
import time
from datetime import datetime

REF_DATE = (2024, 6, 15)
"""Ages are computed as of this fixed date, so every run gives the same result."""
REF_SQL = "DATE '2024-06-15'"
DEFAULT_KEY = "tidelake-bench-hmac-key-0123456789abcdef"
KEY_ENV = "BENCH_HMAC_KEY"
FIELDS = ("id", "full_name", "email_domain", "email_hmac", "phone_hmac", "age", "country")
MIN_AGE_EXCLUSIVE = 13


def hmac_key() -> bytes:
    return os.environ.get(KEY_ENV, DEFAULT_KEY).encode()


class Hasher:
    """hex HMAC-SHA256 with the keyed state computed once (what a careful user writes)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._base = hmac.new(key if key is not None else hmac_key(), digestmod=hashlib.sha256)

    def __call__(self, value: str) -> str:
        h = self._base.copy()
        h.update(value.encode())
        return h.hexdigest()


def age_of(date_text: str) -> int:
    y, m, d = int(date_text[0:4]), int(date_text[5:7]), int(date_text[8:10])
    ry, rm, rd = REF_DATE
    return ry - y - ((m, d) > (rm, rd))


def make_transform(key: bytes | None = None):
    """record dict (parsed input JSON) -> canonical dict, or None when filtered out."""
    hasher = Hasher(key)

    def transform(r: dict) -> dict | None:
        age = age_of(r["dob"]["date"])
        if age <= MIN_AGE_EXCLUSIVE:
            return None
        name = r["name"]
        email = r["email"]
        return {
            "id": r["id"],
            "full_name": name["last"] + " " + name["first"],
            "email_domain": email.split("@", 1)[1],
            "email_hmac": hasher(email),
            "phone_hmac": hasher(r["phone"]),
            "age": age,
            "country": r["location"]["country"],
        }

    return transform


_MASK = (1 << 64) - 1

# -- W3 -------------------------------------------------------------------------------------------

W3_WINDOW_S = 60
W3_ORIGIN = "2024-01-01T00:00:00Z"
"""Windows are aligned to this instant (a minute boundary, so: to the minute)."""
W3_ORIGIN_S = 1_704_067_200
W3_FIELDS = ("window_start", "country", "count", "avg_age")


def ts_seconds(text: str) -> int:
    """'2024-01-01T00:00:00Z' -> epoch seconds."""
    return int(datetime.fromisoformat(text).timestamp())


def window_start_of(ts: int) -> int:
    return ts - (ts - W3_ORIGIN_S) % W3_WINDOW_S


def canonical_avg(count: int, avg: float) -> float:
    """round(avg, 3), after snapping avg to sum/count for the nearest integer sum."""
    total = round(avg * count)
    if abs(avg * count - total) < 1e-6 * max(1, count):
        avg = total / count
    return round(avg, 3)


def window_hash(window_start: int, country: str, count: int, avg_age: float) -> int:
    text = f"{int(window_start)}|{country}|{int(count)}|{canonical_avg(int(count), avg_age):.3f}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class WindowAggregate:
    """The W3 reference in plain Python: (window_start, country) -> [count, sum of ages]."""

    def __init__(self) -> None:
        self.groups: dict[tuple[int, str], list[int]] = {}
        self.max_ts: int | None = None
        self.records = 0

    def add(self, r: dict) -> None:
        ts = ts_seconds(r["ts"])
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
        g = self.groups.setdefault((window_start_of(ts), r["location"]["country"]), [0, 0])
        g[0] += 1
        g[1] += age_of(r["dob"]["date"])
        self.records += 1

    def result(self) -> dict:
        assert self.max_ts is not None
        cs = WindowChecksum(self.max_ts)
        for (start, country), (n, total) in self.groups.items():
            cs.add({"window_start": start, "country": country, "count": n, "avg_age": total / n})
        return {**cs.result(), "max_ts": self.max_ts, "records_in": self.records}


class WindowChecksum:
    """W3 output: count and checksum of the rows of windows the input closes.

    Rows of windows still open at the end of the input (window_start + 60 > max_ts) are
    counted in `open_rows` and left out. A row with "diff": -1 (an update stream's
    retraction) takes its row back out.
    """

    def __init__(self, max_ts: int) -> None:
        self.max_ts = max_ts
        self.count = 0
        self.total = 0
        self.open_rows = 0

    def add(self, rec: dict) -> None:
        start = int(rec["window_start"])
        if start + W3_WINDOW_S > self.max_ts:
            self.open_rows += 1
            return
        sign = -1 if rec.get("diff", 1) < 0 else 1
        h = window_hash(start, rec["country"], rec["count"], float(rec["avg_age"]))
        self.count += sign
        self.total = (self.total + sign * h) & _MASK

    def result(self) -> dict:
        return {"count": self.count, "checksum": f"{self.total:016x}", "open_rows": self.open_rows}


def record_hash(id_, full_name, email_domain, email_hmac, phone_hmac, age, country) -> int:
    text = f"{id_}|{full_name}|{email_domain}|{email_hmac}|{phone_hmac}|{int(age)}|{country}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Checksum:
    """Order-independent: count and the sum (mod 2**64) of a 64-bit hash of each record."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, rec: dict) -> None:
        if "id" not in rec and "uid" in rec:  # pathway reserves the column name 'id'
            rec["id"] = rec["uid"]
        self.count += 1
        self.total = (self.total + record_hash(*(rec[f] for f in FIELDS))) & _MASK

    def add_raw(self, value: bytes) -> None:
        """The ceiling copies input bytes unchanged: checked against the input's raw checksum."""
        self.count += 1
        h = int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "little")
        self.total = (self.total + h) & _MASK

    def add_columns(self, cols: dict) -> None:
        if "id" not in cols and "uid" in cols:
            cols = {**cols, "id": cols["uid"]}
        for row in zip(*(cols[f] for f in FIELDS), strict=True):
            self.count += 1
            self.total = (self.total + record_hash(*row)) & _MASK

    def result(self) -> dict:
        return {"count": self.count, "checksum": f"{self.total:016x}"}


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb(field: str = "VmHWM") -> float | None:
    """This process's peak resident set (VmHWM; ``VmRSS``: the current one). Unlike the
    ru_maxrss that wait4 reports, it is not inflated by the parent's RSS at fork time
    (Linux carries that across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Meter:
    """Marks when the first input record is seen and when the last output is durable.

    The measured window excludes interpreter start, imports and the consumer-group join,
    which differ by system and are not throughput.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.n = 0
        self.t_first: float | None = None
        self.cpu_first: float | None = None
        self.rss_at: dict[int, float | None] = {}  # millions of records read -> VmRSS MB

    def seen(self, n: int = 1) -> None:
        if self.t_first is None:
            self.t_first = time.time()
            self.cpu_first = cpu_seconds()
        before = self.n
        self.n += n
        if n < 1_000_000 and self.n // 1_000_000 > before // 1_000_000:  # RSS over the run
            # (a worker that counts its input at once, as pathway's, has no marks)
            self.rss_at[self.n // 1_000_000] = peak_rss_mb("VmRSS")

    @property
    def done_reading(self) -> bool:
        return self.n >= self.expected

    def report(self, path: str, **extra) -> None:
        import json

        out = {
            "vm_hwm_mb": peak_rss_mb(),
            "t_first": self.t_first,
            "t_end": time.time(),
            "cpu_first": self.cpu_first,
            "cpu_end": cpu_seconds(),
            "records_in": self.n,
            "rss_at_million_mb": self.rss_at,
            **extra,
        }
        with open(path, "w") as f:
            json.dump(out, f)


# -- what every worker shares ------------------------------------------------------------------

PRODUCER_CONFIG = {
    # tidelake's producer defaults (tidelake.broker.kafka.PRODUCER_DEFAULTS), given to every
    # system that lets us configure its producer, so all pay the same broker-side costs
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 262_144,
}
CONSUMER_CONFIG = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.max.bytes": 16 * 1024 * 1024,
    "max.partition.fetch.bytes": 4 * 1024 * 1024,
    "queued.max.messages.kbytes": 32_768,
}


def worker_args(argv=None):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=["W1", "W2", "W3"])
    p.add_argument("--brokers", required=True, help="host:port")
    p.add_argument("--input", required=True, help="input topic")
    p.add_argument("--output", required=True, help="output topic (W1) or directory (W2)")
    p.add_argument("--records", type=int, required=True, help="input records to consume")
    p.add_argument("--group", required=True)
    p.add_argument("--stats", required=True, help="where to write the measured window (JSON)")
    p.add_argument("--workdir", required=True, help="scratch directory of this run")
    return p.parse_args(argv)
