"""Kafka Connect distributed worker with Debezium's PostgreSQL, MySQL and MariaDB connectors,
REST on loopback."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra import _java, _maven, kafka
from tidelake.infra._process import Daemon, cache_root, env_port, port_open

VERSION = kafka.VERSION  # connect-runtime must match the broker's Kafka version
DEBEZIUM_VERSION = "3.4.3.Final"  # built against Kafka 4.1.x
# connector -> Debezium version of its plugin archive (io.debezium:debezium-connector-<name>);
# each plugin bundles its own Debezium core. 3.4.1 is the newest MySQL archive that resolves
# here; the MySQL connector also reads MariaDB.
CONNECTORS = {"postgres": DEBEZIUM_VERSION, "mysql": "3.4.1.Final"}
POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
READY_TIMEOUT = 180.0


def cache_dir() -> Path:
    """``<cache>/connect-<kafka version>``: ``lib/`` (worker) and ``plugins/`` (plugin.path)."""
    return cache_root() / f"connect-{VERSION}"


def plugin_dirs() -> list[Path]:
    """The worker's plugin.path: one directory per connector, holding
    ``debezium-connector-<name>/``."""
    return [cache_dir() / "plugins" / f"debezium-{name}-{v}" for name, v in CONNECTORS.items()]


def ensure_cached() -> tuple[Path, list[Path]]:
    """Return (worker lib dir, plugin.path dirs), downloading them on first use."""
    lib = _maven.copy_dependencies(
        cache_dir(),
        [
            f"org.apache.kafka:connect-runtime:{VERSION}",
            f"org.apache.logging.log4j:log4j-core:{kafka.LOG4J_VERSION}",
            f"org.apache.logging.log4j:log4j-slf4j-impl:{kafka.LOG4J_VERSION}",
        ],
        what=f"Kafka Connect {VERSION}",
    )
    plugins = [
        _maven.unpack(
            path,
            f"io.debezium:debezium-connector-{name}:{version}:tar.gz:plugin",
            what=f"Debezium {name} connector {version}",
        )
        for (name, version), path in zip(CONNECTORS.items(), plugin_dirs(), strict=True)
    ]
    return lib, plugins


def port() -> int:
    """REST port: ``$TIDELAKE_CONNECT_PORT`` or 8083."""
    return env_port("TIDELAKE_CONNECT_PORT", 8083)


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback http only
        return json.loads(resp.read())


def ready(daemon: Daemon) -> bool:
    """True if REST ``GET /`` answers and ``/connector-plugins`` lists the Postgres connector."""
    base = daemon.info().get("url")
    if not base:
        return False
    _get(f"{base}/")
    plugins = _get(f"{base}/connector-plugins")
    return isinstance(plugins, list) and any(
        p.get("class") == POSTGRES_CONNECTOR for p in plugins if isinstance(p, dict)
    )


def _worker_properties(bootstrap: str, rest_port: int, plugins: list[Path]) -> str:
    return f"""\
bootstrap.servers={bootstrap}
group.id=tidelake-connect
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
config.storage.topic=tidelake-connect-configs
offset.storage.topic=tidelake-connect-offsets
status.storage.topic=tidelake-connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=5
status.storage.partitions=1
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:{rest_port}
rest.advertised.host.name=127.0.0.1
rest.advertised.port={rest_port}
plugin.path={",".join(map(str, plugins))}
plugin.discovery=service_load
"""


def start(daemon: Daemon) -> str:
    """Start a worker against the Kafka broker of the same state dir; return its REST URL once
    the Debezium PostgreSQL connector is listed. Kafka must already be running."""
    lib, plugins = ensure_cached()
    broker = Daemon("kafka", daemon.run_dir.parent / "kafka")
    bootstrap = broker.info().get("bootstrap_servers")
    if not broker.running() or not bootstrap:
        raise InfraError("Kafka Connect needs Kafka: run `tidelake infra up kafka connect`")
    rest = port()
    if port_open(rest):
        raise InfraError(
            f"port {rest} is already in use by another process; stop it or set "
            "TIDELAKE_CONNECT_PORT to a free port"
        )
    run = daemon.run_dir
    run.mkdir(parents=True, exist_ok=True)
    props = run / "worker.properties"
    props.write_text(_worker_properties(str(bootstrap), rest, plugins))
    log4j = _java.write_log4j2(
        run / "log4j2.properties",
        info_loggers=[
            "org.apache.kafka.connect.runtime.Connect",
            "org.apache.kafka.connect.runtime.Worker",
            "io.debezium",
        ],
    )
    url = f"http://127.0.0.1:{rest}"
    daemon.start(
        [
            _java.java(),
            *_java.JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{lib}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(props),
        ]
    )
    daemon.write_info(
        url=url,
        port=rest,
        bootstrap_servers=bootstrap,
        version=VERSION,
        debezium_version=DEBEZIUM_VERSION,
        plugin_path=",".join(map(str, plugins)),
    )
    daemon.wait_ready(
        lambda: ready(daemon),
        timeout=READY_TIMEOUT,
        what="REST API listing the PostgreSQL connector",
    )
    return url


def stop(daemon: Daemon) -> bool:
    """Stop the worker (leaves the group cleanly), SIGKILL after 30 s; True if it ran."""
    return daemon.stop(grace=30.0)
