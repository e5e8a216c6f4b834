"""Which function handles each stimulus: the state machine's handler table.

Each module of stimuli (``state.py`` for tasks, ``membership.py`` for workers and nodes,
``clients.py``, ``secession.py``) registers its handlers with ``@handles(StimulusClass)``.
A handler is a function of the ``SchedulerState`` and the stimulus that returns
recommendations; it changes the state only through the state's public methods
(``transition``, ``transition_on``, ``to_client``, ``to_worker``, ``report``, ...).
``SchedulerState`` binds every registered handler to itself when it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runtime.scheduler.stimuli import Stimulus

#: stimulus class -> its handler(state, stimulus) -> recommendations
HANDLERS: dict[type, Callable[[Any, Any], Any]] = {}

_H = TypeVar("_H", bound=Callable[..., Any])


def handles(kind: type[Stimulus]) -> Callable[[_H], _H]:
    """Register the decorated function as the handler of stimuli of class ``kind``."""
    return registers(HANDLERS, kind, kind.__name__)


def registers(table: dict, key: Any, name: str) -> Callable[[_H], _H]:
    """A decorator that puts its function into ``table`` under ``key``, once: the one way the
    scheduler's handler tables are filled (stimuli here, requests in ``server.REQUESTS``)."""

    def register(handler: _H) -> _H:
        if key in table:
            raise ValueError(f"{name} has a handler already: {table[key].__qualname__}")
        table[key] = handler
        return handler

    return register
