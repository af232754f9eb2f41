"""Single-node KRaft Apache Kafka (broker + controller) on loopback, from Maven Central jars."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra import _java, _maven
from tidelake.infra._process import Daemon, cache_root, env_port, port_open, run_checked

VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j2 Kafka 4.1 is built with; binds its slf4j 1.7 API
READY_TIMEOUT = 120.0


def cache_dir() -> Path:
    """Where the broker jars live: ``<cache>/kafka-<version>``."""
    return cache_root() / f"kafka-{VERSION}"


def ensure_cached() -> Path:
    """Return the directory of broker jars, downloading them on first use."""
    return _maven.copy_dependencies(
        cache_dir(),
        [
            f"org.apache.kafka:kafka_2.13:{VERSION}",
            f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
        ],
        what=f"Kafka {VERSION}",
    )


def ports() -> tuple[int, int]:
    """(broker, controller) ports: ``$TIDELAKE_KAFKA_PORT`` (9092) and
    ``$TIDELAKE_KAFKA_CONTROLLER_PORT`` (broker port + 1)."""
    port = env_port("TIDELAKE_KAFKA_PORT", 9092)
    return port, env_port("TIDELAKE_KAFKA_CONTROLLER_PORT", port + 1)


def _server_properties(data: Path, port: int, controller: int) -> str:
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.segment.bytes=16777216
log.retention.hours=168
log.cleaner.dedupe.buffer.size=8388608
"""


def _cluster_id(data: Path) -> str | None:
    try:
        for line in (data / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def ready(daemon: Daemon) -> bool:
    """True if the broker answers a metadata request with the cluster id of our data dir."""
    info = daemon.info()
    port = info.get("port")
    if not port or not port_open(int(port)):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
    meta = admin.list_topics(timeout=3)
    return meta.cluster_id == info.get("cluster_id")


def start(daemon: Daemon) -> str:
    """Start the broker in ``daemon.run_dir`` (formatting storage once); return its URL once
    a client can list topics. Raises InfraError if a port is taken or startup fails."""
    lib = ensure_cached()
    port, controller = ports()
    for p, var in ((port, "TIDELAKE_KAFKA_PORT"), (controller, "TIDELAKE_KAFKA_CONTROLLER_PORT")):
        if port_open(p):
            raise InfraError(
                f"port {p} is already in use by another process; "
                f"stop it or set {var} to a free port"
            )
    run = daemon.run_dir
    run.mkdir(parents=True, exist_ok=True)
    data = run / "data"
    props = run / "server.properties"
    props.write_text(_server_properties(data, port, controller))
    log4j = _java.write_log4j2(
        run / "log4j2.properties", info_loggers=["kafka.server.KafkaRaftServer", "kafka.Kafka"]
    )
    java = _java.java()
    classpath = f"{lib}/*"
    if _cluster_id(data) is None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        run_checked(
            [
                java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            what="formatting Kafka storage",
        )
    url = f"kafka://127.0.0.1:{port}"
    daemon.start(
        [
            java,
            *_java.JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
    )
    daemon.write_info(
        url=url,
        port=port,
        controller_port=controller,
        bootstrap_servers=f"127.0.0.1:{port}",
        cluster_id=_cluster_id(data),
        version=VERSION,
    )
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="listing topics")
    return url


def stop(daemon: Daemon) -> bool:
    """Stop the broker (controlled shutdown, SIGKILL after 30 s); True if it was running."""
    return daemon.stop(grace=30.0)
