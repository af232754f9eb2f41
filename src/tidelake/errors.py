"""The one exception hierarchy. Every message says what to do next."""


class TidelakeError(Exception):
    """Base of every error tidelake raises on purpose."""


class ConfigError(TidelakeError):
    """A pipeline file or setting is wrong: the message names file, line, key and fix."""


class ConnectorError(TidelakeError):
    """A source, sink or broker failed to talk to the system it connects to."""


class QueryError(TidelakeError):
    """A query was refused or failed; safe to show to the caller."""


class InfraError(TidelakeError):
    """A local service (Kafka, PostgreSQL, ...) could not be started or reached."""


class TransientError(ConnectorError):
    """A fault that may clear by itself (a lost connection, a restarting server, a busy
    lock): the runner restarts the flow from its checkpoint with backoff."""


class Fenced(TransientError):
    """This worker lost a partition to another one: its batch is refused, it rejoins."""
