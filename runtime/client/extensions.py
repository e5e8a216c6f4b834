"""The methods ``runtime.Client`` gets from the scheduler's extensions: events, replay, spans.

Each is a thin call into the module that implements it (``event_log.py``, ``replay.py``,
``spans.py`` beside this one) with this client's core; the same functions serve the
module-level API (``runtime.log_event`` inside tasks, ``runtime.span``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from runtime.client import event_log, replay, spans

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient
    from runtime.client.future import Future


class ClientExtensions:
    """Mixed into ``runtime.Client``; ``core`` is its ``ClusterClient``."""

    core: ClusterClient

    def log_event(self, topic: str | list[str], msg: Any) -> None:
        """Log ``msg`` (msgpack serializable) under ``topic`` or each of a list of topics."""
        event_log.log_event(topic, msg, client=self.core)

    def get_events(self, topic: str | None = None) -> Any:
        """``topic``'s events as ``(time, msg)`` tuples, oldest first; every topic's by name if None."""
        return event_log.get_events(topic, client=self.core)

    def subscribe_topic(self, topic: str, handler: Callable[[tuple[float, Any]], Any]) -> None:
        """Call ``handler((time, msg))`` on a thread of this client's for each event logged under ``topic``."""
        event_log.subscribe_topic(topic, handler, client=self.core)

    def unsubscribe_topic(self, topic: str) -> None:
        """Remove ``topic``'s handler; ValueError if there is none."""
        event_log.unsubscribe_topic(topic, client=self.core)

    def recreate_error_locally(self, future: Future | Sequence[Future]) -> Any:
        """Run the failed task behind ``future`` here with its real inputs, so it raises here (and pdb lands in it)."""
        return replay.recreate_error_locally(future)

    def recreate_task_locally(self, future: Future) -> Any:
        """Run ``future``'s task here with its real inputs; returns what it returns."""
        return replay.recreate_task_locally(future)

    def get_spans(self, span_id: str | None = None) -> dict[str, spans.SpanInfo]:
        """Every span the scheduler knows, by id; or ``span_id``'s and those inside it."""
        return spans.get_spans(span_id, client=self.core)
