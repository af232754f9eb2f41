from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidelake.config import Pipeline
from tidelake.errors import ConfigError, ConnectorError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sources.file import FileSource


def ctx(base: Path) -> FlowContext:
    pipeline = Pipeline(name="t", flows={}, base_dir=base)
    return FlowContext("f", pipeline, FlowMetrics("f"), broker_factory=lambda: None)  # type: ignore[arg-type,return-value]


def source(base: Path, checkpoint: dict[str, int] | None = None, **cfg: object) -> FileSource:
    src = FileSource(FileSource.Config.model_validate({"type": "file", **cfg}))
    src.open(ctx(base), checkpoint or {})
    return src


def drain(src: FileSource, size: int = 1_000) -> tuple[list[dict[str, object]], dict[str, int]]:
    rows: list[dict[str, object]] = []
    positions: dict[str, int] = {}
    while (batch := src.read(size, 0.05)) is not None:
        assert batch.table.num_rows <= size
        rows += batch.table.to_pylist()
        positions.update(batch.positions)
    return rows, positions


def write_all_formats(d: Path, n: int = 250) -> list[dict[str, object]]:
    rows = [{"id": i, "name": f"n{i}", "score": i / 4} for i in range(n)]
    d.mkdir(parents=True, exist_ok=True)
    lines = ["id,name,score"] + [f"{r['id']},{r['name']},{r['score']}" for r in rows[:100]]
    (d / "a.csv").write_text("\n".join(lines) + "\n")
    (d / "b.json").write_text(json.dumps(rows[100:150]))
    with gzip.open(d / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[150:200])
    pq.write_table(pa.Table.from_pylist(rows[200:]), d / "d.parquet", row_group_size=7)
    (d / "_ignored.csv").write_text("id\n999\n")
    (d / ".hidden.csv").write_text("id\n999\n")
    return rows


def test_reads_every_format_in_chunks_with_per_file_positions(tmp_path: Path) -> None:
    expected = write_all_formats(tmp_path / "data")
    rows, positions = drain(source(tmp_path, path="data"), size=30)
    assert rows == expected
    assert positions == {
        "data/a.csv": 100,
        "data/b.json": 50,
        "data/c.jsonl.gz": 50,
        "data/d.parquet": 50,
    }


@pytest.mark.parametrize("stop_after", [1, 4, 7, 9])
def test_resumes_exactly_after_checkpoint(tmp_path: Path, stop_after: int) -> None:
    expected = write_all_formats(tmp_path / "data")
    first = source(tmp_path, path="data/*")
    seen: list[dict[str, object]] = []
    checkpoint: dict[str, int] = {}
    for _ in range(stop_after):
        batch = first.read(33, 0.05)
        assert batch is not None
        seen += batch.table.to_pylist()
        checkpoint.update(batch.positions)
    rest, _ = drain(source(tmp_path, checkpoint, path="data/*"), size=33)
    assert seen + rest == expected


def test_glob_format_override_file_column_and_types(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("zip;city\n01000;Bourg\n75001;Paris\n")
    src = source(
        tmp_path,
        path="*.txt",
        format="csv",
        delimiter=";",
        column_types={"zip": "string"},
        file_column="_file",
    )
    rows, _ = drain(src)
    assert rows == [
        {"zip": "01000", "city": "Bourg", "_file": "x.txt"},
        {"zip": "75001", "city": "Paris", "_file": "x.txt"},
    ]


def test_json_records_path(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"data": {"items": [{"a": 1}, {"a": 2}]}}))
    rows, _ = drain(source(tmp_path, path="r.json", records="data.items"))
    assert rows == [{"a": 1}, {"a": 2}]


def test_no_match_is_a_config_error_and_bad_file_a_connector_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no files match"):
        source(tmp_path, path="missing/*.csv")
    (tmp_path / "bad.json").write_text('[{"a": 1}, oops')
    src = source(tmp_path, path="bad.json")
    with pytest.raises(ConnectorError, match="bad.json"):
        src.read(10, 0.05)


def test_watch_picks_up_new_files_and_never_finishes(tmp_path: Path) -> None:
    d = tmp_path / "inbox"
    d.mkdir()
    src = source(tmp_path, path="inbox", watch=True, poll_interval=0.05)
    empty = src.read(100, 0.1)
    assert empty is not None and empty.table.num_rows == 0

    def drop() -> None:
        time.sleep(0.1)
        tmp = d / ".1.csv"
        tmp.write_text("v\n1\n2\n")
        tmp.rename(d / "1.csv")

    threading.Thread(target=drop).start()
    rows: list[dict[str, object]] = []
    positions: dict[str, int] = {}
    deadline = time.monotonic() + 3
    while len(rows) < 2 and time.monotonic() < deadline:
        batch = src.read(100, 0.1)
        assert batch is not None
        rows += batch.table.to_pylist()
        positions.update(batch.positions)
    assert rows == [{"v": 1}, {"v": 2}]
    assert positions == {"inbox/1.csv": 2}
    again = src.read(100, 0.1)
    assert again is not None and again.table.num_rows == 0

    restarted = source(tmp_path, positions, path="inbox", watch=True, poll_interval=0.05)
    (d / "2.csv").write_text("v\n3\n")
    batches = [restarted.read(100, 0.1) for _ in range(3)]
    assert [r for b in batches if b for r in b.table.to_pylist()] == [{"v": 3}]
