"""One small adapter per system compared in perf/: runtime, Dask and Ray, two workers each.

Each starts a local cluster, turns plain functions into its tasks, and puts, submits and
gathers.  Futures and refs are opaque (``Any``).  The benchmarks pick an adapter by name
from ``ADAPTERS``; each adapter imports its system only when started.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Any

from _common import system_version


class System:
    name: str
    module: str  # top-level module that must be importable

    def start(self, task_funcs: Iterable[Callable[..., Any]]) -> None:
        """Start a two-worker cluster; ``task_funcs`` are the functions ``submit`` will run."""
        raise NotImplementedError

    def put(self, value: Any) -> Any:
        raise NotImplementedError

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def gather(self, futures: list[Any]) -> list[Any]:
        raise NotImplementedError

    def roundtrip(self, value: Any) -> Any:
        """Put ``value`` and get it back in the driver."""
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def get_one(self, future: Any) -> Any:
        return self.gather([future])[0]

    def make_actor(self, cls: type) -> Any:
        """Start one actor of ``cls`` on the cluster; its handle."""
        raise NotImplementedError

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        """Call ``method`` on ``actor``; a future of its result (``get_calls`` takes it)."""
        return getattr(actor, method).remote(*args)

    def get_calls(self, futures: list[Any]) -> list[Any]:
        """The results of actor calls, in order."""
        return self.gather(futures)

    def version(self) -> str:
        return system_version(self.module, self.name)


class RuntimeSystem(System):
    name = "runtime"
    module = "runtime"

    def start(self, task_funcs: Iterable[Callable[..., Any]]) -> None:
        import runtime as rt

        self._rt = rt
        rt.init(num_workers=2)
        self._remote = {f: rt.remote(f) for f in task_funcs}

    def put(self, value: Any) -> Any:
        return self._rt.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._remote[fn].remote(*args)

    def gather(self, futures: list[Any]) -> list[Any]:
        return list(self._rt.get(futures))

    def roundtrip(self, value: Any) -> Any:
        return self._rt.get(self._rt.put(value))

    def make_actor(self, cls: type) -> Any:
        return self._rt.remote(cls).remote()

    def shutdown(self) -> None:
        self._rt.shutdown()


class DaskSystem(System):
    name = "dask"
    module = "distributed"

    def start(self, task_funcs: Iterable[Callable[..., Any]]) -> None:
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,  # like Ray's include_dashboard=False
        )
        self._client = Client(self._cluster)

    def put(self, value: Any) -> Any:
        return self._client.scatter(value, hash=False)  # hashing 400 MB would cost Dask ~0.2 s

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._client.submit(fn, *args, pure=False)

    def gather(self, futures: list[Any]) -> list[Any]:
        return list(self._client.gather(futures))

    def roundtrip(self, value: Any) -> Any:
        return self._client.gather(self._client.scatter(value, hash=False))

    def make_actor(self, cls: type) -> Any:
        return self._client.submit(cls, actor=True).result()

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method)(*args)  # an ActorFuture

    def get_calls(self, futures: list[Any]) -> list[Any]:
        return [f.result() for f in futures]  # Client.gather does not take ActorFutures

    def shutdown(self) -> None:
        self._client.close()
        self._cluster.close()

    def version(self) -> str:
        return importlib.metadata.version("distributed")


class RaySystem(System):
    name = "ray"
    module = "ray"

    def start(self, task_funcs: Iterable[Callable[..., Any]]) -> None:
        import ray

        self._ray = ray
        ray.init(num_cpus=2, include_dashboard=False)
        self._remote = {f: ray.remote(f) for f in task_funcs}

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._remote[fn].remote(*args)

    def gather(self, futures: list[Any]) -> list[Any]:
        return list(self._ray.get(futures))

    def roundtrip(self, value: Any) -> Any:
        return self._ray.get(self._ray.put(value))

    def make_actor(self, cls: type) -> Any:
        return self._ray.remote(cls).remote()

    def shutdown(self) -> None:
        self._ray.shutdown()


ADAPTERS: dict[str, type[System]] = {"runtime": RuntimeSystem, "dask": DaskSystem, "ray": RaySystem}
