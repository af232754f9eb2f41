"""Transforms: vectorized functions from batch to batch (pyarrow compute or DuckDB over Arrow).

Each is found through ``tidelake.registry`` by the ``type`` used in pipeline files.
"""
