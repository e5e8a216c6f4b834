"""The scheduler: a pure state machine (``state.py``) and the I/O shell that drives it (``server.py``).

Before any of its modules is imported, decide whether the compiled build of the state
machine runs or its plain Python sources (``compiled.py``).
"""

from runtime.scheduler import compiled

compiled.use_pure_python()
