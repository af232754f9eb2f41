from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pyarrow as pa
import pytest

from tidelake.config import Pipeline
from tidelake.demo.review_texts import corpus
from tidelake.errors import ConfigError
from tidelake.runtime.base import FlowContext
from tidelake.runtime.metrics import FlowMetrics
from tidelake.transforms.redact import Redact

KEY = "r" * 32
FALSE_POSITIVES_MAX = 60
"""Clean texts out of 1,000 that redact alters: 12-digit ticket numbers passing Luhn (55)."""


def ctx() -> FlowContext:
    pipeline = Pipeline(name="t", flows={}, base_dir=Path("."))
    return FlowContext("reviews", pipeline, FlowMetrics("reviews"), broker_factory=lambda: None)  # type: ignore[arg-type,return-value]


def redact(texts: list[str | None], **cfg: object) -> tuple[list[str | None], FlowContext]:
    r = Redact(Redact.Config.model_validate({"type": "redact", "fields": ["text"], **cfg}))
    c = ctx()
    r.open(c)
    out = r(pa.table({"text": pa.array(texts, pa.string()), "n": range(len(texts))}))
    assert out.column("n").to_pylist() == list(range(len(texts)))
    return out.column("text").to_pylist(), c


def test_each_kind_is_replaced_and_failing_checks_stay() -> None:
    out, c = redact(
        [
            "mail jean.dupont@example.fr, tel 06 12 34 56 78 / +33 (0)6 12 34 56 78",
            "carte 4111 1111 1111 1111, commande 4111 1111 1111 1112",
            "iban FR76 3000 6000 0112 3456 7890 189 MERCI, faux FR76 3000 6000 0112 3456 7890 188",
            "GB82 WEST 1234 5698 7654 32 puis 0033 6 12 34 56 78 et +1 415-555-0132",
            "06 12 34 56 78 07 12 34 56 78",
            None,
            "rien de personnel, 12 € le 3/4",
        ]
    )
    assert out == [
        "mail <EMAIL>, tel <PHONE> / <PHONE>",
        "carte <CARD>, commande 4111 1111 1111 1112",
        "iban <IBAN> MERCI, faux FR76 3000 6000 0112 3456 7890 188",
        "<IBAN> puis <PHONE> et <PHONE>",
        "<PHONE> <PHONE>",
        None,
        "rien de personnel, 12 € le 3/4",
    ]
    assert c.metrics.counts == {
        "redacted_email": 1,
        "redacted_iban": 2,
        "redacted_phone": 6,
        "redacted_card": 1,
    }


def test_names_and_patterns_from_the_pipeline_file() -> None:
    out, c = redact(
        ["Élodie et JEAN  DUPONT, dossier CMD-123456; Jeanne reste", "o'brien a dit"],
        names=["Jean Dupont", "Élodie", "O'Brien"],
        patterns={"ORDER": "CMD-[0-9]{6}"},
        kinds=["email"],
    )
    assert out == ["<NAME> et <NAME>, dossier <ORDER>; Jeanne reste", "<NAME> a dit"]
    assert c.metrics.counts["redacted_name"] == 3
    assert c.metrics.counts["redacted_order"] == 1


def test_tokens_are_keyed_hmac_of_the_normalized_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDACT_KEY", KEY)
    out, _ = redact(
        ["A Jean.Dupont@Example.fr 06 12 34 56 78", "B 06.12.34.56.78"], key_env="REDACT_KEY"
    )

    def token(kind: str, value: str) -> str:
        return f"<{kind}:{hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]}>"

    phone = token("PHONE", "0612345678")
    assert out == [f"A {token('EMAIL', 'jean.dupont@example.fr')} {phone}", f"B {phone}"]
    monkeypatch.setenv("REDACT_KEY", "short")
    with pytest.raises(ConfigError, match="REDACT_KEY is shorter than 16"):
        redact(["x"], key_env="REDACT_KEY")


@pytest.mark.parametrize(
    ("cfg", "problem"),
    [
        ({"patterns": {"ORDER": "CMD-[0-9"}}, "not a valid RE2"),
        ({"patterns": {"ORDER": "x*"}}, "matches the empty text"),
        ({"patterns": {"order": "x"}}, "use capitals"),
        ({"patterns": {"EMAIL": "x"}}, "not a built-in kind"),
    ],
)
def test_bad_patterns_are_config_errors(cfg: dict[str, object], problem: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=problem):
        redact(["x"], **cfg)


def test_a_missing_column_fails_unless_ignored() -> None:
    r = Redact(Redact.Config(type="redact", fields=["body"]))
    with pytest.raises(ConfigError, match="body not in the batch"):
        r(pa.table({"text": ["a"]}))
    r = Redact(Redact.Config(type="redact", fields=["body"], missing="ignore"))
    assert r(pa.table({"text": ["a@b.fr"]})).column("text").to_pylist() == ["a@b.fr"]


def _alnum(text: str) -> str:
    return re.sub(r"[^0-9a-z@.]", "", text.lower())


def test_a_thousand_planted_values_of_each_kind_are_all_removed() -> None:
    texts, planted, clean = corpus(1000)
    out, c = redact(texts)  # type: ignore[arg-type]
    leaks = [v for vs, o in zip(planted, out, strict=True) for v in vs if _alnum(v) in _alnum(o)]
    assert leaks == []
    assert min(c.metrics.counts.values()) >= 1000
    cleaned, _ = redact(clean)  # type: ignore[arg-type]
    altered = sum(a != b for a, b in zip(clean, cleaned, strict=True))
    assert altered <= FALSE_POSITIVES_MAX
