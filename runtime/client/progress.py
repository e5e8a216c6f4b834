"""``runtime.progress(futures)``: a live progress bar, in a terminal or a Jupyter notebook.

The bar is tqdm's (``tqdm.auto`` picks the notebook widget inside Jupyter).  Each future's
done callback advances it, so nothing polls the scheduler.  In a terminal ``progress``
blocks until every future is done, as Dask's does (futures of a local scheduler run their
tasks meanwhile); in a notebook it returns the bar at once and the widget keeps moving while
the cell's output stays live.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from typing import Any

from runtime.client.future import Future, collect_futures
from runtime.client.waiting import wait_until
from runtime.errors import GetTimeoutError

logger = logging.getLogger("runtime.client")


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress(
    *futures: Any, notebook: bool | None = None, timeout: float | None = None, desc: str = "tasks", file: Any = None
) -> Any:
    """Show a bar that fills as ``futures`` (futures, or lists/dicts of them) finish.

    Blocks until all are done (or ``timeout`` s pass: ``GetTimeoutError``) unless in a
    notebook (``notebook=None`` detects it), where it returns the bar at once.  Failed
    and cancelled tasks count as done and are tallied after the bar.
    """
    given: list[Future] = []
    collect_futures(futures, given)
    bad = next((x for x in futures if not isinstance(x, (Future, list, tuple, set, frozenset, dict))), None)
    if bad is not None:
        raise TypeError(f"progress() takes futures, or lists and dicts of them, not a {type(bad).__name__}")
    found = {f.key: f for f in given}
    if notebook is None:
        notebook = _in_notebook()
    if notebook and importlib.util.find_spec("ipywidgets") is None:
        # tqdm's widget needs ipywidgets: show a text bar, and wait for it as in a terminal.
        logger.warning("progress(): the notebook widget needs ipywidgets; showing a text bar")
        notebook = False
    if notebook:
        from tqdm.notebook import tqdm as notebook_tqdm

        bar = notebook_tqdm(total=len(found), desc=desc, unit="task")
    else:
        from tqdm import tqdm

        bar = tqdm(total=len(found), desc=desc, unit="task", file=file, dynamic_ncols=True)
    lock = threading.Lock()
    counts = {"done": 0, "failed": 0}
    all_done = threading.Event()

    def advance(f: Future) -> None:
        with lock:
            counts["done"] += 1
            if f.status != "finished":
                counts["failed"] += 1
                bar.set_postfix(failed=counts["failed"], refresh=False)
            bar.update(1)
            if counts["done"] == len(found):
                all_done.set()

    for f in found.values():
        f.add_done_callback(advance)
    if notebook or not found:
        return bar
    try:
        # Its callbacks say when all are done: the owners are asked to wait for those alone.
        owners: dict[Any, list[Future]] = {f._owner: [] for f in found.values()}
        wait_until(all_done.is_set, owners, None if timeout is None else time.monotonic() + timeout)
    except GetTimeoutError:
        raise GetTimeoutError(f"progress(): {len(found) - counts['done']} of {len(found)} tasks not done") from None
    finally:
        bar.close()
    return None
