"""The flow runtime: connectors' contracts, the runner, checkpoints and metrics."""

from tidelake.runtime.base import Batch, Checkpoint, FlowContext, Sink, Source, Transform

__all__ = ["Batch", "Checkpoint", "FlowContext", "Sink", "Source", "Transform"]
