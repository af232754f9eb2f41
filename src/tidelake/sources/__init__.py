"""Sources: where rows enter a flow (files, HTTP APIs, generators, topics, CDC).

Each is found through ``tidelake.registry`` by the ``type`` used in pipeline
files, and resumes exactly after the checkpoint its flow's sink stored.
"""
