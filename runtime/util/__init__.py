"""Ray's ``ray.util`` as Ray's users know it: ``ActorPool``, ``queue.Queue``,
``multiprocessing.Pool`` and ``list_named_actors`` (``import runtime as ray`` then
``ray.util.ActorPool``)."""

from __future__ import annotations

import socket
from typing import Any

from runtime.util.actor_pool import ActorPool

__all__ = ["ActorPool", "get_node_ip_address", "list_named_actors", "multiprocessing", "queue"]


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """The names of the live named actors; with ``all_namespaces``, Ray's dicts
    ``{"name": ..., "namespace": "default"}`` (this runtime has one namespace)."""
    from runtime.api.context import current_runtime

    names = current_runtime().client.request("named-actors")
    return [{"name": n, "namespace": "default"} for n in names] if all_namespaces else names


def get_node_ip_address() -> str:
    """This machine's IP address as other nodes see it (Ray's ``ray.util.get_node_ip_address``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def __getattr__(name: str) -> Any:
    if name in ("queue", "multiprocessing"):  # ray.util.queue..., importable as attributes too
        import importlib

        return importlib.import_module(f"runtime.util.{name}")
    raise AttributeError(f"module 'runtime.util' has no attribute {name!r}")
