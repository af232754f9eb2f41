"""Inclusive share of samples per function from a py-spy raw (collapsed) profile.

py-spy record -r 100 -f raw -o tl.raw -- .venv/bin/python -m bench.workers.tidelake ...
python bench/profile/pyspy_summary.py tl.raw
"""

import sys
from collections import Counter

WATCH = [
    "run (tidelake/runtime/runner.py",
    "flush (tidelake/runtime/runner.py",
    "poll (tidelake/broker/kafka.py",
    "read (tidelake/sources/topic.py",
    "_decode (tidelake/sources/topic.py",
    "decode_json (tidelake/formats/json.py",
    "encode_json (tidelake/formats/json.py",
    "produce (tidelake/broker/kafka.py",
    "flush (tidelake/broker/kafka.py",
    "__call__ (tidelake/transforms/sql.py",
    "__call__ (tidelake/transforms/fields.py",
    "__call__ (tidelake/transforms/pseudonymize.py",
    "query (tidelake/transforms/sql.py",
    "write (tidelake/sinks/topic.py",
    "save (tidelake/sinks/checkpoints.py",
    "lag (tidelake/broker/kafka.py",
    "concat_tables",
    "committed (tidelake/sources/topic.py",
]


def main(path: str) -> None:
    total = 0
    inc: Counter[str] = Counter()
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        n_i = int(n)
        total += n_i
        seen = set()
        for w in WATCH:
            if w in stack and w not in seen:
                seen.add(w)
                inc[w] += n_i
    print(f"{total} samples")
    for w, n in inc.most_common():
        print(f"  {n / total:6.1%}  {w})")


if __name__ == "__main__":
    main(sys.argv[1])
