"""Where a pipeline's Iceberg tables live: the SQL catalog and the warehouse.

The catalog is pyiceberg's SQL catalog: a SQLite file beside the warehouse by
default (``<state>/lake_catalog.db`` for a local lake), PostgreSQL when
``lake_catalog`` is a ``postgresql://`` URL. The warehouse is a local directory
(``file://``) or an S3 prefix (``s3://bucket/prefix``) reached through
pyarrow's S3 client with path-style addressing, so MinIO-like servers work.

Every pipeline gets its own namespace (its name, with characters Iceberg
reserves replaced by ``_``), so two pipelines can share one catalog.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from tidelake.config import Pipeline
from tidelake.errors import ConfigError, QueryError
from tidelake.s3_settings import S3Settings

CATALOG_NAME = "tidelake"
_IDENT = re.compile(r"[^a-z0-9_]")
_catalogs: dict[tuple[str, str, tuple[tuple[str, str], ...]], SqlCatalog] = {}
_lock = threading.Lock()


def identifier_part(name: str) -> str:
    """A namespace or table name Iceberg and DuckDB both accept unquoted-ish: ``[a-z0-9_]+``."""
    cleaned = _IDENT.sub("_", name.strip().lower()) or "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


def namespace(pipeline: Pipeline) -> str:
    return identifier_part(pipeline.name)


def warehouse(pipeline: Pipeline) -> str:
    """The warehouse URL: ``file:///abs/dir`` or ``s3://bucket/prefix`` (no trailing slash)."""
    url = pipeline.url(pipeline.lake).rstrip("/")
    if url.startswith("file://"):
        return "file://" + str(Path(url[len("file://") :]).resolve())
    if url.startswith(("s3://", "s3a://")):
        return "s3://" + url.split("://", 1)[1]
    raise ConfigError(
        f"lake: unsupported URL {pipeline.lake!r} "
        "(use file://path/to/dir for a local lake or s3://bucket/prefix)"
    )


def catalog_url(pipeline: Pipeline) -> str:
    """SQLAlchemy URL of the catalog database."""
    if pipeline.lake_catalog:
        url = pipeline.url(pipeline.lake_catalog)
        if url.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        if url.startswith(("sqlite:///", "postgresql+")):
            return url
        raise ConfigError(
            f"lake_catalog: unsupported URL {pipeline.lake_catalog!r} "
            "(use sqlite:///path/catalog.db or postgresql://user:pass@host/db)"
        )
    wh = warehouse(pipeline)
    if wh.startswith("file://"):
        path = Path(wh[len("file://") :]).parent / "lake_catalog.db"
    else:
        path = pipeline.state_dir.resolve() / "lake_catalog.db"
    return f"sqlite:///{path}"


def s3_properties(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """pyiceberg FileIO properties for S3 from ``TIDELAKE_S3_ENDPOINT`` and the AWS variables."""
    return S3Settings.from_env(env).iceberg_properties()


def open_catalog(pipeline: Pipeline) -> SqlCatalog:
    """The pipeline's catalog (one per catalog/warehouse per process), its namespace created."""
    wh = warehouse(pipeline)
    uri = catalog_url(pipeline)
    props = s3_properties() if wh.startswith("s3://") else {}
    key = (uri, wh, tuple(sorted(props.items())))
    with _lock:
        catalog = _catalogs.get(key)
        if catalog is None:
            if uri.startswith("sqlite:///"):
                Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            if wh.startswith("file://"):
                Path(wh[len("file://") :]).mkdir(parents=True, exist_ok=True)
            catalog = SqlCatalog(CATALOG_NAME, uri=uri, warehouse=wh, **props)
            _catalogs[key] = catalog
        _create_namespace(catalog, namespace(pipeline))
    return catalog


def _create_namespace(catalog: SqlCatalog, name: str) -> None:
    """Idempotent even when another process creates it at the same moment."""
    from sqlalchemy.exc import IntegrityError

    try:
        catalog.create_namespace_if_not_exists(name)
    except IntegrityError:
        if not catalog.namespace_exists(name):
            raise


OWN_RETRIES = {"commit.retry.num-retries": "0"}
"""pyiceberg >= 0.12 re-bases a conflicting commit onto the new head by itself. tidelake
must not let it: the fencing and the checkpoint carried in the snapshot summary were
computed against the old head. Our writers retry themselves, re-reading the table."""


def guard(table: Table) -> Table:
    """Make sure ``table`` has pyiceberg's automatic commit retry off (see ``OWN_RETRIES``)."""
    if any(table.properties.get(k) != v for k, v in OWN_RETRIES.items()):
        with table.transaction() as tx:
            tx.set_properties(OWN_RETRIES)
    return table


def table_names(pipeline: Pipeline) -> list[str]:
    """Names of the pipeline's lake tables, sorted."""
    catalog = open_catalog(pipeline)
    return sorted(ident[-1] for ident in catalog.list_tables(namespace(pipeline)))


def load_table(pipeline: Pipeline, name: str) -> Table:
    """A lake table by name; ``QueryError`` listing the tables that exist otherwise."""
    catalog = open_catalog(pipeline)
    try:
        return catalog.load_table((namespace(pipeline), name))
    except NoSuchTableError:
        known = ", ".join(table_names(pipeline)) or "none yet"
        raise QueryError(
            f"no lake table {name!r} in pipeline {pipeline.name!r} (tables: {known})"
        ) from None
