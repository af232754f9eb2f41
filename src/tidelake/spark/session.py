"""The Spark session flows with ``engine: spark`` run in: jars, catalog, checkpoints.

The Kafka source and the Iceberg runtime are jars from Maven Central, resolved once into the
same cache as the Kafka broker's (``tidelake.infra._maven``); jars pyspark already ships
(Hadoop, Scala, slf4j) are left out so one copy of each class is on the classpath.

The lake is the pipeline's own: Iceberg's JDBC catalog over the same catalog database and
warehouse as pyiceberg's SQL catalog (both use the ``iceberg_tables`` schema), under the same
catalog name, so ``tidelake query``, the API and the dashboard see Spark's snapshots at once.
A warehouse on S3 is written through Iceberg's ``S3FileIO`` (the AWS bundle jar, fetched only
then) with the same endpoint and credentials as pyiceberg (``s3_settings``), and the streaming
checkpoints go beside it (``<warehouse>/_spark_checkpoints/<pipeline>``, through Hadoop's
S3A on the bundle's AWS SDK), so a driver restarted on another machine resumes; otherwise they
are under the pipeline's state dir. ``spark: {checkpoint: ...}`` chooses (a path or s3://).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tidelake import extras
from tidelake.config import Pipeline
from tidelake.infra import _maven
from tidelake.infra._process import cache_root
from tidelake.s3_settings import S3Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KAFKA_CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.3"
"""4.1.3, fetched alone: 4.1.1 fails a query restarted from its checkpoint with a
NullPointerException in ``KafkaMicroBatchStream.metrics`` (SPARK-55271), and 4.1.3's own
dependency ``spark-token-provider-kafka`` 4.1.3 is not on Maven Central, so 4.1.1's
dependencies (``KAFKA_DEPENDENCIES``) come with it. It loads on every pyspark 4.1.x."""
KAFKA_DEPENDENCIES = [
    "org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.1.1",
    "org.apache.kafka:kafka-clients:3.9.1",
    "org.apache.commons:commons-pool2:2.12.1",
]
ICEBERG_RUNTIME = "org.apache.iceberg:iceberg-spark-runtime-4.1_2.13:1.12.0"
ICEBERG_AWS = "org.apache.iceberg:iceberg-aws-bundle:1.12.0"
"""S3FileIO and the AWS SDK (2.54.17) it needs, in one jar."""
S3A = [
    "org.apache.hadoop:hadoop-aws:3.4.2",  # pyspark 4.1's Hadoop (hadoop-client-api 3.4.2)
    "software.amazon.awssdk:s3-transfer-manager:2.54.17",  # what the bundle's SDK lacks
    "software.amazon.awssdk:apache-client:2.54.17",
    "org.apache.httpcomponents:httpclient:4.5.14",
    "org.apache.httpcomponents:httpcore:4.4.16",
]
"""Hadoop's S3A filesystem (streaming checkpoints on S3), on the Iceberg bundle's AWS SDK."""
JDBC_DRIVERS = ["org.xerial:sqlite-jdbc:3.50.3.0", "org.postgresql:postgresql:42.7.8"]
_VERSIONED = re.compile(r"^(.*?)-\d[\w.+-]*\.jar$")
_lock = threading.Lock()


def jars(s3: bool = False) -> list[Path]:
    """The jars Spark needs beyond pyspark's own (``s3``: and Iceberg's S3FileIO), downloading
    them on first use."""
    import pyspark

    lib = _maven.copy_dependencies(
        cache_root() / "spark-jars-3",
        [*KAFKA_DEPENDENCIES, ICEBERG_RUNTIME, *JDBC_DRIVERS],
        what="Spark Kafka + Iceberg",
        alone=[KAFKA_CONNECTOR],
    )
    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    found = [p for p in lib.glob("*.jar") if _artifact(p.name) not in shipped]
    if s3:
        aws = _maven.copy_dependencies(
            cache_root() / "spark-jars-aws-2", [], what="Iceberg AWS", alone=[ICEBERG_AWS, *S3A]
        )
        found += aws.glob("*.jar")
    return sorted(found)


def _artifact(jar: str) -> str:
    m = _VERSIONED.match(jar)
    return m.group(1) if m else jar


def _jdbc_catalog(pipeline: Pipeline) -> dict[str, str]:
    from tidelake.lake.catalog import CATALOG_NAME, catalog_url, open_catalog, warehouse

    open_catalog(pipeline)  # creates the catalog tables and the namespace, as pyiceberg has them
    wh = warehouse(pipeline)
    url = catalog_url(pipeline)
    if url.startswith("sqlite:///"):
        jdbc = "jdbc:sqlite:" + url[len("sqlite:///") - 1 :]
    else:
        jdbc = "jdbc:postgresql://" + url.split("://", 1)[1].rpartition("@")[2]
    prefix = f"spark.sql.catalog.{CATALOG_NAME}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": jdbc,
        f"{prefix}.warehouse": wh,
        f"{prefix}.jdbc.schema-version": "V1",
    }
    if wh.startswith("s3://"):  # pyiceberg's FileIO properties are Iceberg's, but the region
        props = S3Settings.from_env().iceberg_properties()
        conf[f"{prefix}.io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
        conf[f"{prefix}.client.region"] = props.pop("s3.region")
        conf |= {f"{prefix}.{k}": v for k, v in props.items()}
    user = url.split("://", 1)[1].rpartition("@")[0] if "@" in url else ""
    if user:
        name, _, password = user.partition(":")
        conf[f"{prefix}.jdbc.user"] = name
        if password:
            conf[f"{prefix}.jdbc.password"] = password
    return conf


def _on_s3(pipeline: Pipeline) -> bool:
    from tidelake.lake.catalog import warehouse

    return warehouse(pipeline).startswith("s3://") or checkpoint_root(pipeline).startswith("s3a:")


def checkpoint_root(pipeline: Pipeline) -> str:
    """Where the streaming queries keep their checkpoints (one folder per flow): a local path
    or an ``s3a://`` URL."""
    from tidelake.lake.catalog import warehouse

    if pipeline.spark.checkpoint:
        root = pipeline.url(pipeline.spark.checkpoint).removeprefix("file://")
    elif (wh := warehouse(pipeline)).startswith("s3://"):
        root = f"{wh.rstrip('/')}/_spark_checkpoints/{pipeline.name}"
    else:
        return str((pipeline.state_dir / "spark" / "checkpoints").resolve())
    return "s3a://" + root.removeprefix("s3://") if root.startswith("s3://") else root


def _s3a() -> dict[str, str]:
    """Hadoop S3A settings from the same environment as every other S3 client (s3_settings)."""
    settings = S3Settings.from_env()
    conf = {"fs.s3a.path.style.access": "true", "fs.s3a.endpoint.region": settings.region}
    if settings.endpoint:
        conf["fs.s3a.endpoint"] = settings.endpoint
        conf["fs.s3a.connection.ssl.enabled"] = str(settings.endpoint.startswith("https"))
    for attr, key in (("access_key", "access.key"), ("secret_key", "secret.key"),
                      ("session_token", "session.token")):  # fmt: skip
        if value := getattr(settings, attr):
            conf[f"fs.s3a.{key}"] = value
    if settings.session_token:
        conf["fs.s3a.aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        )
    return {f"spark.hadoop.{k}": v for k, v in conf.items()}


def session(pipeline: Pipeline) -> SparkSession:
    """The process's Spark session for ``pipeline`` (created on first use)."""
    sql = extras.load("pyspark.sql", "engine: spark")
    with _lock:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # python transforms' workers
        s3 = _on_s3(pipeline)
        conf = {
            "spark.master": pipeline.spark.master,
            "spark.app.name": f"tidelake-{pipeline.name}",
            "spark.jars": ",".join(str(p) for p in jars(s3=s3)),
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.extensions": "org.apache.iceberg.spark.extensions."
            "IcebergSparkSessionExtensions",
            "spark.sql.shuffle.partitions": "2",  # state stores per stateful step (Spark: 200)
            **_jdbc_catalog(pipeline),
            **(_s3a() if s3 else {}),
            **pipeline.spark.conf,
        }
        builder = sql.SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark: SparkSession = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        return spark
