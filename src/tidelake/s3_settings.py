"""S3 connection settings, read one way for every S3 client tidelake opens.

The file source, the s3 sink, the lake (pyiceberg FileIO) and the local test server all
take the endpoint from ``TIDELAKE_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:9000``; unset = AWS),
credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``;
unset = the AWS default chain) and the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
(default ``us-east-1``), with path-style addressing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    region: str = DEFAULT_REGION
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, endpoint: str | None = None
    ) -> S3Settings:
        """The settings of the environment; ``endpoint`` overrides ``TIDELAKE_S3_ENDPOINT``."""
        env = os.environ if env is None else env
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            endpoint=endpoint or env.get("TIDELAKE_S3_ENDPOINT") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def filesystem(self, **options: Any) -> pafs.S3FileSystem:
        """A pyarrow S3 client (``options``: e.g. ``allow_bucket_creation``)."""
        kwargs: dict[str, Any] = {"region": self.region, **options}
        for key in ("access_key", "secret_key", "session_token"):
            if getattr(self, key):
                kwargs[key] = getattr(self, key)
        if self.endpoint:
            url = urlparse(self.endpoint if "://" in self.endpoint else "http://" + self.endpoint)
            kwargs["endpoint_override"], kwargs["scheme"] = url.netloc, url.scheme
        return pafs.S3FileSystem(**kwargs)

    def iceberg_properties(self) -> dict[str, str]:
        """The same settings as pyiceberg FileIO properties."""
        props = {"s3.region": self.region, "s3.path-style-access": "true"}
        for attr, key in (
            ("endpoint", "s3.endpoint"),
            ("access_key", "s3.access-key-id"),
            ("secret_key", "s3.secret-access-key"),
            ("session_token", "s3.session-token"),
        ):
            if getattr(self, attr):
                props[key] = getattr(self, attr)
        return props
