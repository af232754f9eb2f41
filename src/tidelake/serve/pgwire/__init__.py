"""The PostgreSQL wire endpoint (``tidelake serve --pg-port``): psql, JDBC and ODBC clients
query the pipeline's tables through the same sandbox as ``POST /api/query``."""

from tidelake.serve.pgwire.server import TLS, PgServer, Running, start

__all__ = ["TLS", "PgServer", "Running", "start"]
