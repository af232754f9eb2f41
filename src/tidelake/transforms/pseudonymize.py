"""``pseudonymize``: replace identifying columns by a keyed HMAC-SHA256 (hex).

Never a bare hash: SHA-256 of an e-mail address is reversible by anyone with a
list of addresses, an HMAC is not without the key. The same key gives the same
pseudonym, so joins across tables and runs still work; rotating the key breaks
that linkage on purpose.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

import pyarrow as pa
from pydantic import Field

from tidelake.errors import ConfigError
from tidelake.identifiers import quote
from tidelake.runtime.base import ConnectorConfig, FlowContext, Transform
from tidelake.transforms.sql import BATCH, BatchSQL

MIN_KEY_BYTES = 16
_BLOCK = 64  # SHA-256 block size (RFC 2104)


def present_fields(table: pa.Table, fields: list[str], missing: str, transform: str) -> list[str]:
    """The ``fields`` the batch has; a missing one is a ConfigError unless ``missing: ignore``."""
    present = [f for f in fields if f in table.column_names]
    if len(present) != len(fields) and missing == "error":
        absent = [f for f in fields if f not in present]
        raise ConfigError(
            f"{transform}: column(s) {', '.join(absent)} not in the batch "
            f"(batch columns: {', '.join(table.column_names)}; "
            "fix the name or set missing: ignore)"
        )
    return present


def read_key(ctx: FlowContext, transform: str, key_env: str) -> tuple[bytes, bytes]:
    """The HMAC pads of the secret in ``key_env``; a ConfigError saying how to set it."""
    key = os.environ.get(key_env, "")
    if len(key.encode()) < MIN_KEY_BYTES:
        state = "is not set" if not key else f"is shorter than {MIN_KEY_BYTES} bytes"
        raise ConfigError(
            f"flow {ctx.flow}: {transform}: environment variable {key_env} "
            f"{state}; set it to a secret, e.g. export {key_env}="
            '"$(python -c "import secrets; print(secrets.token_hex(32))")"'
            " (keep it: the same key gives the same pseudonyms)"
        )
    return hmac_pads(key.encode())


def hmac_sql(expr: str) -> str:
    """DuckDB SQL for the hex HMAC-SHA256 of ``expr``'s text, the pads bound as $1 and $2."""
    return f"sha256($2::BLOB || unhex(sha256($1::BLOB || encode(({expr})::VARCHAR))))"


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The RFC 2104 inner and outer padded keys."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


class Pseudonymize(Transform):
    """HMAC-SHA256 of each listed column, as 64 hex characters; NULL stays NULL.

    Values are hashed as their UTF-8 text (non-strings as DuckDB's text form,
    which for integers is ``str(value)``), so
    ``hmac.new(key, value.encode(), "sha256").hexdigest()`` reproduces a
    pseudonym outside tidelake. Computed by DuckDB's vectorized SHA-256 (the
    HMAC construction of RFC 2104), the key bound as a query parameter.
    """

    class Config(ConnectorConfig):
        type: Literal["pseudonymize"]
        fields: list[str] = Field(min_length=1, description="columns to replace by their HMAC")
        key_env: str = Field(
            "TIDELAKE_PSEUDONYMIZE_KEY",
            description="environment variable holding the secret key (at least 16 bytes)",
        )
        missing: Literal["error", "ignore"] = Field(
            "error",
            description="a listed column absent from a batch: fail (default, so a renamed PII "
            "column cannot slip through in clear) or ignore",
        )

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = BatchSQL()
        self._pads: tuple[bytes, bytes] | None = None

    def open(self, ctx: FlowContext) -> None:
        self._pads = read_key(ctx, "pseudonymize", self.config.key_env)

    def __call__(self, table: pa.Table) -> pa.Table:
        if self._pads is None:
            raise ConfigError("pseudonymize: call open() first (the key is read there)")
        present = present_fields(table, self.config.fields, self.config.missing, "pseudonymize")
        if not present:
            return table
        exprs = ", ".join(f"{hmac_sql(quote(f))} AS {quote(f)}" for f in present)
        hashed = self.engine.query(
            table, f"SELECT {exprs} FROM {BATCH}", "pseudonymize", params=list(self._pads)
        )
        for f in present:
            table = table.set_column(table.column_names.index(f), f, hashed.column(f))
        return table
