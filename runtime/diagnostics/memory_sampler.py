"""``MemorySampler``: cluster memory over time, as ``distributed.diagnostics.MemorySampler`` records it.

::

    ms = MemorySampler()
    with ms.sample("before"):
        rt.get(work())
    ms.samples["before"]        # [(seconds, process, store, spilled), ...]: cluster totals
    ms.by_node["before"]        # [(seconds, {node: [process, store, spilled]}), ...]
    ms.to_pandas()              # one column per label (needs pandas); ms.plot() draws them

The scheduler takes the samples (from the memory its workers and node agents report in
their heartbeats) every ``interval`` seconds while the block runs; leaving the block
fetches them.  *process* is the workers' own memory, *store* the node stores' bytes in
shared memory and *spilled* their bytes on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime.scheduler.sampler import check_interval

#: what each sample holds, in order
FIELDS = ("process", "store", "spilled")


class MemorySampler:
    def __init__(self) -> None:
        #: label -> [(seconds since the block began, process, store, spilled)], cluster totals
        self.samples: dict[str, list[tuple[float, int, int, int]]] = {}
        #: label -> [(seconds, {node: [process, store, spilled]})]
        self.by_node: dict[str, list[tuple[float, dict[str, list[int]]]]] = {}

    @contextmanager
    def sample(self, label: str | None = None, *, client: Any = None, interval: float = 0.5) -> Iterator[None]:
        """Sample cluster memory every ``interval`` seconds while the block runs.

        ``interval`` is at least 0.01 s (``MIN_INTERVAL``).  A sampling keeps at most 10,000
        samples: past that it keeps every other one and samples half as often.  It stops
        when the block ends, or on the scheduler when this client disconnects.
        """
        interval = check_interval(interval)
        if client is None:
            from runtime.api.context import current_runtime

            client = current_runtime().client
        label = label if label is not None else f"Samples {len(self.samples)}"
        sid = client.request("memory-sampling-start", interval=interval)
        if isinstance(sid, dict):  # {"error": ...}
            raise RuntimeError(f"memory sampling {label!r} could not start: {sid.get('error')}")
        try:
            yield
        finally:
            raw = client.request("memory-sampling-stop", id=sid)
            if isinstance(raw, dict):  # {"error": ...}
                raise RuntimeError(f"memory sampling {label!r} failed: {raw.get('error')}")
            self.by_node[label] = [(t, nodes) for t, nodes in raw]
            self.samples[label] = [(t, *(sum(v[i] for v in nodes.values()) for i in range(3))) for t, nodes in raw]

    def to_pandas(self, field: str = "process", align: bool = False) -> Any:
        """A DataFrame of one ``field`` (process, store or spilled; or "total"), one column per
        label, indexed by seconds; ``align`` starts every label where its memory first rises."""
        if field != "total" and field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)} or 'total', not {field!r}")
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("MemorySampler.to_pandas() needs pandas: pip install pandas") from e
        columns = {}
        for label, rows in self.samples.items():
            values = [sum(r[1:]) if field == "total" else r[1 + FIELDS.index(field)] for r in rows]
            times = [r[0] for r in rows]
            if align and values:
                start = next((t for t, v in zip(times, values, strict=True) if v > values[0]), times[0])
                times = [t - start for t in times]
            columns[label] = pd.Series(values, index=pd.Index(times, name="seconds"))
        return pd.DataFrame(columns)

    def plot(self, field: str = "process", align: bool = False, **kwargs: Any) -> Any:
        """Plot ``to_pandas(field, align)`` (needs pandas and matplotlib)."""
        return self.to_pandas(field, align).plot(ylabel=f"{field} memory (bytes)", **kwargs)
