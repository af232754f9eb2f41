"""``redact``: personal data inside free text replaced by typed placeholders or keyed tokens.

Reviews, messages and comments carry e-mail addresses, phone numbers, card numbers and
IBANs in the middle of sentences; ``pseudonymize`` replaces whole columns, this replaces
the parts of a text that are personal data and keeps the rest readable::

    "Call me at 06 12 34 56 78" -> "Call me at <PHONE>"     (or <PHONE:3f9c0a1b2d4e5f60>)

One pass per column, in DuckDB: every candidate is found by one alternation of the kinds'
patterns (so a span is claimed once, by the first kind matching at the leftmost place),
each candidate is classified and checked (Luhn for cards, ISO 13616 mod 97 for IBANs) by
list lambdas, and the text is rebuilt from the pieces between candidates. A candidate
failing its check (an order number that is not a card) stays as written.
"""

from __future__ import annotations

import re
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import ConnectorConfig, FlowContext, Transform
from tidelake.transforms.pseudonymize import hmac_sql, present_fields, read_key
from tidelake.transforms.sql import BATCH, BatchSQL

Kind = Literal["email", "iban", "phone", "card"]

_SEP = r"[ .\-]?"
PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    # Printed in groups of four or compact; the groups keep a following word out.
    "iban": r"(?i:\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b)",
    # +33 6 12 34 56 78, +33 (0)6 12..., 0033 6..., +1 415-555-0132; French 06 12 34 56 78.
    "phone": (
        rf"(?:(?:\+|\b00)[1-9]\d{{0,2}}(?:{_SEP}\(0\))?(?:{_SEP}\d){{6,12}}"
        rf"|\b0[1-9](?:{_SEP}\d\d){{4}})\b"
    ),
    # 12 (Maestro) to 19 digits; cards start with 0-6 (7-9: fuel, telecom, national cards).
    "card": r"\b[0-6](?:[ \-]?\d){11,18}\b",
}
"""The built-in kinds, in the order they claim a span (phone before card: two phone
numbers in a row must not be read as one failing card number)."""

_DIGITS = "regexp_replace(x, '[^0-9]', '', 'g')"
_LUHN = (
    f"list_sum(list_transform(string_split(reverse({_DIGITS}), ''), lambda c, i: "
    "CASE WHEN i % 2 = 0 THEN (c::INT * 2) // 10 + (c::INT * 2) % 10 ELSE c::INT END)"
    ") % 10 = 0"
)


def _mod97(x: str) -> str:
    """ISO 13616: the IBAN ``x`` (any spacing) moved by four, letters as 10..35, mod 97 = 1."""
    alnum = f"upper(regexp_replace({x}, '[^0-9A-Za-z]', '', 'g'))"
    digits = (
        f"array_to_string(list_transform(string_split({alnum}[5:] || {alnum}[1:4], ''), "
        "lambda c: CASE WHEN c >= 'A' THEN (ascii(c) - 55)::VARCHAR ELSE c END), '')"
    )
    return (
        f"(length({alnum}) BETWEEN 15 AND 34 AND list_reduce(list_transform("
        f"string_split({digits}, ''), lambda c: c::INT), lambda a, b: (a * 10 + b) % 97) = 1)"
    )


# A group of four letters right after an IBAN ("... 1890 MERC") is read as part of it:
# the IBAN without its last group also counts (and the word goes with it, on the safe side).
_WITHOUT_LAST_GROUP = "regexp_replace(x, ' ?[A-Za-z0-9]{1,4}$', '')"
_IBAN = f"({_mod97('x')} OR {_mod97(_WITHOUT_LAST_GROUP)})"
CHECKS = {"iban": _IBAN, "card": _LUHN}
"""SQL predicates over a candidate ``x`` of that kind."""

_META = re.compile(r"([\\.^$|?*+()\[\]{}])")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _name_pattern(names: list[str]) -> str:
    """Case-insensitive whole words (RE2's ``\\b`` is ASCII: only put where it applies)."""
    alternatives = []
    for name in sorted(names, key=len, reverse=True):
        body = r"\s+".join(_META.sub(r"\\\1", part) for part in name.split())
        head = r"\b" if re.match(r"\w", name, re.ASCII) else ""
        tail = r"\b" if re.search(r"\w$", name, re.ASCII) else ""
        alternatives.append(f"{head}{body}{tail}")
    return f"(?i:{'|'.join(alternatives)})"


class Redact(Transform):
    """Replace personal data inside text columns by ``<KIND>`` (or ``<KIND:token>``).

    ``token`` is the first 16 hex characters of the HMAC-SHA256 (key from ``key_env``, the
    same rules as ``pseudonymize``) of the match, lowercased, without spaces, dots, dashes
    and parentheses (e-mail addresses keep their dots): the same address or number written
    twice gives the same token, so texts about one customer still link. NULL stays NULL;
    other columns are unchanged. Counts per kind land in the flow's metrics
    (``redacted_email``, ...).
    """

    class Config(ConnectorConfig):
        type: Literal["redact"]
        fields: list[str] = Field(min_length=1, description="text columns to redact")
        kinds: list[Kind] = Field(
            ["email", "iban", "phone", "card"], description="built-in kinds to find"
        )
        names: list[str] = Field(
            [], description="names (people, places) to redact as `<NAME>`, any case, whole words"
        )
        patterns: dict[str, str] = Field(
            {},
            description="more kinds: KIND -> regular expression (RE2), e.g. "
            "{ORDER: 'CMD-[0-9]{6}'}; replaced by `<ORDER>`",
        )
        key_env: str | None = Field(
            None,
            description="environment variable holding an HMAC key (16 bytes+): matches "
            "become `<KIND:token>`; unset: plain `<KIND>` placeholders",
        )
        missing: Literal["error", "ignore"] = Field(
            "error",
            description="a listed column absent from a batch: fail (default) or ignore",
        )

        @field_validator("patterns")
        @classmethod
        def _kind_names(cls, v: dict[str, str]) -> dict[str, str]:
            for kind in v:
                if not re.fullmatch(r"[A-Z][A-Z0-9_]*", kind) or kind.lower() in PATTERNS:
                    raise ValueError(
                        f"pattern kind {kind!r}: use capitals, digits and _ (e.g. ORDER_ID), "
                        f"not a built-in kind ({', '.join(k.upper() for k in PATTERNS)})"
                    )
            return v

    config: Config
    ctx: FlowContext | None = None

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        kinds = {k.upper(): PATTERNS[k] for k in PATTERNS if k in config.kinds}
        if config.names:
            kinds["NAME"] = _name_pattern(config.names)
        kinds.update(config.patterns)
        for kind, pattern in config.patterns.items():
            self._check_pattern(kind, pattern)
        self.kinds = list(kinds)
        self._pattern = "|".join(f"(?:{p})" for p in kinds.values())
        self._classify = " ".join(
            f"WHEN regexp_full_match(x, {_literal(p)})"
            + (f" AND {CHECKS[k.lower()]}" if k.lower() in CHECKS else "")
            + f" THEN '{k}'"
            for k, p in kinds.items()
        )
        self._pads: tuple[bytes, bytes] | None = None

    def _check_pattern(self, kind: str, pattern: str) -> None:
        what = f"redact: patterns: {kind}"
        try:
            [(empty,)] = self.engine.con.sql(
                f"SELECT regexp_full_match('', {_literal(pattern)})"
            ).fetchall()
        except duckdb.Error as e:
            raise ConfigError(f"{what}: not a valid RE2 expression: {e}") from e
        if empty:
            raise ConfigError(f"{what}: matches the empty text; make it match at least a char")

    def open(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        if self.config.key_env is not None:
            self._pads = read_key(ctx, "redact", self.config.key_env)

    def _sql(self, column: str) -> str:
        c, pattern = quote(column), _literal(self._pattern)
        if self._pads is None:
            replace = "'<' || k[i] || '>'"
        else:
            norm = (
                "CASE WHEN k[i] = 'EMAIL' THEN lower(m[i]) "
                "ELSE lower(regexp_replace(m[i], '[ .()\\-]', '', 'g')) END"
            )
            replace = f"'<' || k[i] || ':' || left({hmac_sql(norm)}, 16) || '>'"
        counts = ", ".join(f"list_count(list_filter(k, lambda x: x = '{k}'))" for k in self.kinds)
        pieces = (
            f"p[1] || array_to_string(list_transform(range(1, len(m) + 1), lambda i: "
            f"CASE WHEN k[i] IS NULL THEN m[i] ELSE {replace} END || p[i + 1]), '')"
        )
        return (
            f"SELECT CASE WHEN len(m) = 0 THEN t ELSE {pieces} END AS {c}, {counts} "
            f"FROM (SELECT t, p, m, list_transform(m, lambda x: CASE {self._classify} END) AS k "
            f"FROM (SELECT {c} AS t, regexp_split_to_array({c}, {pattern}) AS p, "
            f"regexp_extract_all({c}, {pattern}) AS m FROM {BATCH}))"
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        present = present_fields(table, self.config.fields, self.config.missing, "redact")
        params = list(self._pads) if self._pads is not None else None
        for f in present:
            if not pa.types.is_string(table.schema.field(f).type) and not pa.types.is_large_string(
                table.schema.field(f).type
            ):
                table = table.set_column(
                    table.column_names.index(f), f, table.column(f).cast(pa.string())
                )
            out = self.engine.query(table, self._sql(f), f"redact {f}", params=params)
            table = table.set_column(table.column_names.index(f), f, out.column(0))
            if self.ctx is not None:
                counts = self.ctx.metrics.counts
                for i, kind in enumerate(self.kinds, start=1):
                    key = f"redacted_{kind.lower()}"
                    counts[key] = counts.get(key, 0) + (pc.sum(out.column(i)).as_py() or 0)
        return table
