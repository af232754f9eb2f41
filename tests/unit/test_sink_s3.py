"""``s3`` sink on ``file://``: object names, formats, checkpoint beside the data, re-delivery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tidelake.config import loads
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.sinks.s3 import S3Sink, S3SinkConfig, s3_filesystem


def make_sink(tmp_path: Path, flow: str = "raw", **config: Any) -> S3Sink:
    pipeline = loads("name: demo\nflows: {}\n", tmp_path / "p.yaml")
    ctx = FlowContext(
        flow=flow,
        pipeline=pipeline,
        metrics=FlowMetrics(flow),
        broker_factory=lambda: None,  # type: ignore[arg-type,return-value]
    )
    sink = S3Sink(S3SinkConfig.model_validate({"type": "s3", "path": "file://out"} | config))
    sink.open(ctx)
    return sink


def rows(start: int, stop: int, partition: int = 0, topic: str = "ratings") -> pa.Table:
    n = stop - start
    return pa.table(
        {
            "id": list(range(start, stop)),
            "name": [f"r{i}" for i in range(start, stop)],
            "_topic": [topic] * n,
            "_partition": pa.array([partition] * n, pa.int32()),
            "_offset": pa.array(range(start, stop), pa.int64()),
        }
    )


def objects(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Data objects under ``root`` (relative name -> decoded records)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "_checkpoints" not in p.parts:
            text = p.read_text()
            rel = str(p.relative_to(root))
            if p.suffix == ".json":
                out[rel] = json.loads(text)
            else:
                assert text.endswith("\n")
                out[rel] = [json.loads(line) for line in text.splitlines()]
    return out


def test_one_object_per_partition_named_by_offsets(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    assert sink.checkpoint() == {}
    sink.write(pa.concat_tables([rows(0, 3), rows(10, 12, partition=1)]), {"ratings/0": 3})
    sink.write(rows(3, 5), {"ratings/0": 5, "ratings/1": 12})
    got = objects(tmp_path / "out")
    assert list(got) == [
        "ratings/partition=0/0000000000-0000000002.jsonl",
        "ratings/partition=0/0000000003-0000000004.jsonl",
        "ratings/partition=1/0000000010-0000000011.jsonl",
    ]
    assert got["ratings/partition=0/0000000000-0000000002.jsonl"] == [
        {"id": 0, "name": "r0"},
        {"id": 1, "name": "r1"},
        {"id": 2, "name": "r2"},
    ]
    stored = json.loads((tmp_path / "out/_checkpoints/raw.json").read_text())
    assert stored["positions"] == {"ratings/0": 5, "ratings/1": 12}
    assert make_sink(tmp_path).checkpoint() == {"ratings/0": 5, "ratings/1": 12}


def test_crash_before_checkpoint_then_redelivery_does_not_duplicate(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(rows(0, 5), {"ratings/0": 5})
    # the next batch's data lands, then the process dies before the checkpoint is written
    sink._put_partition("ratings/0", rows(5, 20))
    assert make_sink(tmp_path).checkpoint() == {"ratings/0": 5}
    # the restarted flow re-reads from offset 5 in smaller batches
    restarted = make_sink(tmp_path)
    restarted.write(rows(5, 12), {"ratings/0": 12})
    restarted.write(rows(12, 20), {"ratings/0": 20})
    got = objects(tmp_path / "out")
    ids = sorted(r["id"] for records in got.values() for r in records)
    assert ids == list(range(20)), got.keys()
    assert list(got) == [
        "ratings/partition=0/0000000000-0000000004.jsonl",
        "ratings/partition=0/0000000005-0000000011.jsonl",
        "ratings/partition=0/0000000012-0000000019.jsonl",
    ]


def test_rows_without_provenance_are_named_by_batch_sequence(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, flow="gen", format="json", path="file://raw/events")
    batch = pa.table({"v": [1, 2]})
    sink.write(batch, {"generator": 2})
    # a crash after the data of batch 2: the replay gets the same name and overwrites it
    sink.write(pa.table({"v": [3, 4, 5]}), {"generator": 5})
    replay = make_sink(tmp_path, flow="gen", format="json", path="file://raw/events")
    assert replay.checkpoint() == {"generator": 5}
    replay._seq = 1  # as if the checkpoint of batch 2 had never been written
    replay.write(pa.table({"v": [3, 4, 5]}), {"generator": 5})
    assert objects(tmp_path / "raw/events") == {
        "_flow=gen/0000000001.json": [{"v": 1}, {"v": 2}],
        "_flow=gen/0000000002.json": [{"v": 3}, {"v": 4}, {"v": 5}],
    }


def test_empty_write_moves_the_checkpoint_only(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(rows(0, 0), {"ratings/0": 7})
    assert objects(tmp_path / "out") == {}
    assert make_sink(tmp_path).checkpoint() == {"ratings/0": 7}


def test_keep_provenance_and_types(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, keep_provenance=True)
    batch = rows(0, 1).append_column("when", pa.array([0], pa.timestamp("ms", "UTC")))
    sink.write(batch, {"ratings/0": 1})
    (records,) = objects(tmp_path / "out").values()
    assert records[0]["_offset"] == 0 and records[0]["_topic"] == "ratings"
    assert records[0]["when"].startswith("1970-01-01")


def test_config_and_s3_client_settings() -> None:
    with pytest.raises(ValidationError, match="s3://bucket/prefix"):
        S3SinkConfig.model_validate({"type": "s3", "path": "/tmp/x"})
    with pytest.raises(ValidationError, match="needs a bucket"):
        S3SinkConfig.model_validate({"type": "s3", "path": "s3:///prefix"})
    fs = s3_filesystem(
        {
            "TIDELAKE_S3_ENDPOINT": "http://127.0.0.1:9000",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
        }
    )
    assert fs.region == "us-east-1"
