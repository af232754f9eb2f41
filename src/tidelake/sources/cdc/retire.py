"""Retiring a CDC flow for good (``tidelake cdc drop-slot``).

A replication slot nobody reads keeps every WAL segment since its position. Retiring
drops the flow's slot and publication; for engine ``debezium`` the connector (which
holds the slot) is first stopped, its offsets reset and deleted in Kafka Connect.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tidelake.config import Pipeline
from tidelake.errors import ConfigError, ConnectorError
from tidelake.sources.cdc import CdcConfig, drop_slot
from tidelake.sources.cdc.envelope import default_name


def retire(pipeline: Pipeline, flow: str, say: Callable[[str], None]) -> bool:
    """Drop the slot of cdc flow ``flow`` (after its Debezium connector); True if it existed.

    ``say`` is told each step's outcome. Idempotent: a second run finds nothing to drop.
    """
    source = pipeline.flows[flow].source if flow in pipeline.flows else None
    if not isinstance(source, CdcConfig):
        raise ConfigError(f"flow {flow!r} is not a cdc flow of pipeline {pipeline.name!r}")
    if source.engine == "sqlite":
        raise ConfigError(f"flow {flow!r} uses engine 'sqlite', which has no slot")
    slot = source.slot or default_name(pipeline.name, flow)
    if source.engine == "debezium":
        from tidelake.sources.cdc.debezium import ConnectClient, connector_name

        name = connector_name(source, slot)
        client = ConnectClient(source.connect_url)
        try:
            retired = client.retire(name)
        finally:
            client.close()
        say(
            f"connector {name} "
            + ("stopped, offsets reset, deleted" if retired else "did not exist")
        )
    url = pipeline.url(source.database or pipeline.database)
    existed = _when_released(
        lambda: drop_slot(url, slot, source.publication or slot),
        timeout=30.0 if source.engine == "debezium" else 0.0,
    )
    say(f"slot {slot} " + ("dropped" if existed else "did not exist"))
    return existed


def _when_released(drop: Callable[[], bool], timeout: float) -> bool:
    """A stopped connector's task lets go of its slot a moment later: retry while in use."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return drop()
        except ConnectorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
