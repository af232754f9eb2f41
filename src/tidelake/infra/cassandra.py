"""Apache Cassandra 5.0 (single node, Java 17) on loopback, from Maven Central jars."""

from __future__ import annotations

import signal
from pathlib import Path

from tidelake.errors import InfraError
from tidelake.infra import _java, _maven
from tidelake.infra._process import Daemon, cache_root, env_port, port_open

VERSION = "5.0.6"
READY_TIMEOUT = 120.0
HEAP = "1g"

#: The ``--add-exports/--add-opens`` lines of Cassandra's conf/jvm17-server.options: without
#: them the daemon stops with "Cassandra is unable to access required classes".
_JPMS = [
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
        )
    ),
]


def cache_dir() -> Path:
    """Where the server jars live: ``<cache>/cassandra-<version>``."""
    return cache_root() / f"cassandra-{VERSION}"


def ensure_cached() -> Path:
    """Return the directory of server jars, downloading them on first use (~70 MB)."""
    return _maven.copy_dependencies(
        cache_dir(), [f"org.apache.cassandra:cassandra-all:{VERSION}"], what=f"Cassandra {VERSION}"
    )


def ports() -> tuple[int, int]:
    """(CQL, storage) ports: ``$TIDELAKE_CASSANDRA_PORT`` (9042) and
    ``$TIDELAKE_CASSANDRA_STORAGE_PORT`` (7010; 7000 is often taken by other clusters)."""
    return env_port("TIDELAKE_CASSANDRA_PORT", 9042), env_port(
        "TIDELAKE_CASSANDRA_STORAGE_PORT", 7010
    )


def _yaml(data: Path, cql: int, storage: int) -> str:
    dirs = {d: data / d for d in ("data", "commitlog", "saved_caches", "hints", "cdc_raw")}
    return f"""\
cluster_name: tidelake
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: ["{dirs["data"]}"]
commitlog_directory: {dirs["commitlog"]}
saved_caches_directory: {dirs["saved_caches"]}
hints_directory: {dirs["hints"]}
cdc_raw_directory: {dirs["cdc_raw"]}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage}
ssl_storage_port: {storage + 1}
native_transport_port: {cql}
start_native_transport: true
endpoint_snitch: SimpleSnitch
concurrent_compactors: 1
"""


_LOGBACK = """\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d %-5level [%thread] %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="OUT"/></root>
  <logger name="org.apache.cassandra.service.CassandraDaemon" level="INFO"/>
</configuration>
"""


def ready(daemon: Daemon) -> bool:
    """True once the CQL port answers a query."""
    port = daemon.info().get("port")
    if not port or not port_open(int(port)):
        return False
    from cassandra.cluster import Cluster

    cluster = Cluster(["127.0.0.1"], port=int(port), connect_timeout=3)
    try:
        session = cluster.connect()
        return session.execute("SELECT release_version FROM system.local").one() is not None
    finally:
        cluster.shutdown()


def start(daemon: Daemon) -> str:
    """Start the node in ``daemon.run_dir``; return ``cassandra://127.0.0.1:<port>`` once CQL
    answers (6-10 s on a warm cache)."""
    lib = ensure_cached()
    cql, storage = ports()
    for p, var in (
        (cql, "TIDELAKE_CASSANDRA_PORT"),
        (storage, "TIDELAKE_CASSANDRA_STORAGE_PORT"),
    ):
        if port_open(p):
            raise InfraError(
                f"port {p} is already in use by another process; "
                f"stop it or set {var} to a free port"
            )
    run = daemon.run_dir
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    conf = run / "cassandra.yaml"
    conf.write_text(_yaml(data, cql, storage))
    logback = run / "logback.xml"
    logback.write_text(_LOGBACK)
    jamm = sorted(lib.glob("jamm-*.jar"))
    if not jamm:
        raise InfraError(f"no jamm jar in {lib}; delete {lib} so it is fetched again")
    daemon.start(
        [
            _java.java(),
            "-Xms256m",
            f"-Xmx{HEAP}",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djdk.attach.allowAttachSelf=true",
            *_JPMS,
            "-Dio.netty.tryReflectionSetAccessible=true",
            f"-javaagent:{jamm[0]}",
            f"-Dcassandra.config=file://{conf}",
            f"-Dlogback.configurationFile={logback}",
            f"-Dcassandra.storagedir={data}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp",
            f"{run}:{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
    )
    url = f"cassandra://127.0.0.1:{cql}"
    daemon.write_info(url=url, port=cql, storage_port=storage, version=VERSION)
    daemon.wait_ready(lambda: ready(daemon), timeout=READY_TIMEOUT, what="CQL query")
    return url


def stop(daemon: Daemon) -> bool:
    """SIGTERM (Cassandra flushes memtables, 5-10 s), SIGKILL after 30 s."""
    return daemon.stop(sig=signal.SIGTERM, grace=30.0)
