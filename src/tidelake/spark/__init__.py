"""``engine: spark``: a flow of the pipeline file run as an Apache Spark Structured Streaming
query, into the same Iceberg lake (``session``: jars and catalog; ``sql``: DuckDB SQL to Spark
SQL; ``translate``: transforms as DataFrame operations; ``runner``: the query, exactly once)."""
