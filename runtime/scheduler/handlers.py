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

    def register(handler: _H) -> _H:
        if kind in HANDLERS:
            raise ValueError(f"{kind.__name__} has a handler already: {HANDLERS[kind].__qualname__}")
        HANDLERS[kind] = handler
        return handler

    return register
