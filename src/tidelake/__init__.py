"""tidelake: real-time data pipelines — ingest, log, transform, land exactly once, serve."""

from tidelake.errors import ConfigError, ConnectorError, QueryError, TidelakeError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ConnectorError", "QueryError", "TidelakeError", "__version__"]
