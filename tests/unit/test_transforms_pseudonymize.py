from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pyarrow as pa
import pytest

from tidelake.config import Pipeline
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.pseudonymize import Pseudonymize, hmac_pads

KEY = "k" * 40


def ctx() -> FlowContext:
    pipeline = Pipeline(name="t", flows={}, base_dir=Path("."))
    return FlowContext("users", pipeline, FlowMetrics("users"), broker_factory=lambda: None)  # type: ignore[arg-type,return-value]


def opened(monkeypatch: pytest.MonkeyPatch, key: str = KEY, **cfg: object) -> Pseudonymize:
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", key)
    p = Pseudonymize(Pseudonymize.Config.model_validate({"type": "pseudonymize", **cfg}))
    p.open(ctx())
    return p


def test_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDELAKE_PSEUDONYMIZE_KEY", raising=False)
    p = Pseudonymize(Pseudonymize.Config(type="pseudonymize", fields=["email"]))
    with pytest.raises(ConfigError, match="TIDELAKE_PSEUDONYMIZE_KEY is not set.*secrets"):
        p.open(ctx())
    monkeypatch.setenv("TIDELAKE_PSEUDONYMIZE_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        p.open(ctx())
    with pytest.raises(ConfigError, match="open"):
        p(pa.table({"email": ["a"]}))


def test_output_is_keyed_hmac_not_a_bare_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    p = opened(monkeypatch, fields=["email", "phone", "user_id"])
    t = pa.table(
        {
            "email": ["ada@example.com", None, "ada@example.com"],
            "phone": ["+33 1 23", "x", None],
            "user_id": [7, 8, 9],
            "age": [36, 41, 1],
        }
    )
    out = p(t)
    emails = out.column("email").to_pylist()
    expected = hmac.new(KEY.encode(), b"ada@example.com", hashlib.sha256).hexdigest()
    assert emails == [expected, None, expected]
    assert emails[0] != hashlib.sha256(b"ada@example.com").hexdigest()
    assert (
        out.column("user_id").to_pylist()[0] == hmac.new(KEY.encode(), b"7", "sha256").hexdigest()
    )
    assert out.column("phone").to_pylist()[2] is None
    assert out.column("age").to_pylist() == [36, 41, 1]
    assert out.column_names == t.column_names

    other = opened(monkeypatch, key="another key of 16+ bytes", fields=["email"])
    assert other(t).column("email").to_pylist()[0] != expected


def test_long_keys_and_unicode_match_the_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "é" * 100  # longer than a SHA-256 block: hashed first (RFC 2104)
    p = opened(monkeypatch, key=key, fields=["name"])
    out = p(pa.table({"name": ["Zoë", ""]})).column("name").to_pylist()
    assert out == [hmac.new(key.encode(), v.encode(), "sha256").hexdigest() for v in ["Zoë", ""]]
    assert len(hmac_pads(key.encode())[0]) == 64


def test_missing_column_fails_unless_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="email"):
        opened(monkeypatch, fields=["email"])(pa.table({"mail": ["x"]}))
    out = opened(monkeypatch, fields=["email"], missing="ignore")(pa.table({"mail": ["x"]}))
    assert out.to_pylist() == [{"mail": "x"}]
