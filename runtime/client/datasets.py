"""Published datasets: named values any client of the cluster can read (Dask's
``Client.publish_dataset`` and ``Client.datasets``).

A published ``Future`` travels as its key and the scheduler keeps it alive until it is
unpublished, after every client let go of it; a reader gets a ``Future`` of its own.  Other
values travel pickled.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from runtime.client.client import ClusterClient
from runtime.client.coordination import _ask, decode_item, encode_item

_NO_DEFAULT = object()


def publish(cc: ClusterClient, datasets: dict[str, Any], override: bool = False) -> None:
    for name, value in datasets.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a dataset name must be a non-empty string, not {name!r}")
        item, _held = encode_item(cc, value)
        result = _ask(cc, "dataset-publish", name=name, item=item, override=override)
        if result is not None:
            raise ValueError(result["exists"])


def get(cc: ClusterClient, name: str, default: Any = _NO_DEFAULT) -> Any:
    result = _ask(cc, "dataset-get", name=name)
    if "missing" in result:
        if default is _NO_DEFAULT:
            raise KeyError(result["missing"])
        return default
    return decode_item(cc, result)


def unpublish(cc: ClusterClient, name: str) -> None:
    result = _ask(cc, "dataset-unpublish", name=name)
    if result is not None:
        raise KeyError(result["missing"])


def names(cc: ClusterClient) -> list[str]:
    return _ask(cc, "dataset-list")


class Datasets(MutableMapping):
    """``Client.datasets``: the published datasets as a mapping."""

    def __init__(self, cc: ClusterClient):
        self._cc = cc

    def __getitem__(self, name: str) -> Any:
        return get(self._cc, name)

    def __setitem__(self, name: str, value: Any) -> None:
        publish(self._cc, {name: value})

    def __delitem__(self, name: str) -> None:
        unpublish(self._cc, name)

    def __iter__(self) -> Iterator[str]:
        return iter(names(self._cc))

    def __len__(self) -> int:
        return len(names(self._cc))

    def __contains__(self, name: object) -> bool:
        return name in names(self._cc)
