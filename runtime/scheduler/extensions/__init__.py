"""The scheduler's extensions: each a module of its own beside the state machine."""
