"""Published datasets: named values every client of the cluster can read (Dask's
``publish_dataset``).  A published future's key is held (``KeyRefs``) until it is
unpublished, so its value outlives every client that had it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.scheduler.extensions.base import Item, KeyRefs, name_of
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


class Datasets(SchedulerPlugin):
    """The publish extension: requests ``dataset-publish``, ``-get``, ``-list``, ``-unpublish``."""

    def __init__(self, refs: KeyRefs):
        #: published values by name
        self.datasets: dict[str, Item] = {}
        self.refs = refs

    def publish(self, msg: dict) -> dict | None:
        name = name_of(msg)
        if name in self.datasets and not msg.get("override", False):
            return {"exists": f"a dataset named {name!r} is published already (override=True replaces it)"}
        item = self.refs.check(msg["item"])
        self.refs.hold(item)
        old = self.datasets.get(name)
        self.datasets[name] = item
        if old is not None:
            self.refs.release(old)
        return None

    def get(self, msg: dict, client: str) -> Item | dict:
        name = name_of(msg)
        item = self.datasets.get(name)
        if item is None:
            return {"missing": f"no dataset named {name!r} is published"}
        self.refs.give(item, client)
        return item

    def unpublish(self, msg: dict) -> dict | None:
        name = name_of(msg)
        item = self.datasets.pop(name, None)
        if item is None:
            return {"missing": f"no dataset named {name!r} is published"}
        self.refs.release(item)
        return None


def _ext(s: Scheduler) -> Datasets:
    return s.extensions["datasets"]


request("dataset-publish")(lambda s, msg, peer: _ext(s).publish(msg))
request("dataset-get")(lambda s, msg, peer: _ext(s).get(msg, peer))
request("dataset-list")(lambda s, msg, peer: sorted(_ext(s).datasets))
request("dataset-unpublish")(lambda s, msg, peer: _ext(s).unpublish(msg))
