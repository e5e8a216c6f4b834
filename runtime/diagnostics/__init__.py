"""Tools to watch a running cluster."""

from runtime.diagnostics.memory_sampler import MemorySampler

__all__ = ["MemorySampler"]
