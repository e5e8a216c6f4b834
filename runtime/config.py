"""One configuration tree for every part of runtime, in the four layers Dask documents.

::

    defaults (SETTINGS)  <  config files  <  RUNTIME_* variables  <  config.set(...)  <  per call

Keys are dotted and hyphenated (``scheduler.worker-saturation``); ``_`` and ``-`` are the
same, so ``get("scheduler.worker_saturation")`` works too.  The layers:

* **defaults**: the ``SETTINGS`` table below, one line per key with its parser and meaning.
  Adding a setting is adding one line there.
* **files**: every ``*.toml`` (and ``*.yaml``/``*.yml`` when PyYAML is installed) in
  ``$RUNTIME_CONFIG`` (a file or a directory), else in ``$XDG_CONFIG_HOME/runtime/``
  (``~/.config/runtime/``), read in name order.  Nested tables and dotted keys both work.
* **environment**: ``RUNTIME_SCHEDULER__WORKER_SATURATION=2`` sets
  ``scheduler.worker-saturation`` (``__`` nests, as Dask's ``DASK_`` variables do).  The
  single-name variables older code read (``RUNTIME_VALIDATE``, ``RUNTIME_INLINE_THRESHOLD``,
  ...) still work: each setting names its own in ``env=``.
* **set**: ``config.set(scheduler="sync")`` for the rest of the program, or ``with
  config.set(...):`` for a block.  The driver's ``set`` values reach the processes of a
  ``LocalCluster`` it starts (``serialize``/``INHERIT_VARIABLE``).
* **per call**: an argument that names a setting (``runtime.get(refs, scheduler="threads")``,
  ``init(num_workers=4)``) wins over all of the above for that call.

Files and variables are read at import (``refresh()`` reads them again).  An unknown key
or a bad value is an error that names it, with the closest known key suggested.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import threading
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "UnknownKeyError", "SETTINGS", "get", "set", "refresh", "serialize", "describe"]

#: where the driver's ``set`` values travel to the processes it starts, as JSON
INHERIT_VARIABLE = "RUNTIME_INTERNAL_INHERIT_CONFIG"
#: variables that configure the configuration itself, not settings
_RESERVED = {"RUNTIME_CONFIG", INHERIT_VARIABLE}


class ConfigError(ValueError):
    """A setting with a value it cannot take; the message names the key and where it came from."""


class UnknownKeyError(ConfigError, KeyError):
    """A key that is not a setting; the message suggests the closest one."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


# ----------------------------------------------------------------------------- parsers
# Each takes a value from a file or set() (already typed) or a variable (a string) and
# returns it checked and converted, or raises ValueError saying what was expected.


def _bool(x: Any) -> bool:
    if isinstance(x, bool):
        return x
    if isinstance(x, int) and x in (0, 1):
        return bool(x)
    if isinstance(x, str) and x.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return x.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError("expected true or false")


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTE_UNITS |= {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(x: Any) -> int:
    """A whole number of bytes, or a string such as ``"100 KiB"`` or ``"4GB"``; the one
    size parser of the package (flags, settings and arguments)."""
    if isinstance(x, str):
        text = x.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :]
        if unit not in _BYTE_UNITS or not number:
            raise ValueError("expected a number of bytes such as 104857600, '100 MiB' or '4GB'")
        x = float(number) * _BYTE_UNITS[unit]
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
        raise ValueError("expected a number of bytes >= 0")
    return int(x)


_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "ms": 1e-3, "millisecond": 1e-3,
               "milliseconds": 1e-3, "us": 1e-6, "m": 60, "min": 60, "minute": 60, "minutes": 60,
               "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}  # fmt: skip


def parse_timeout(x: Any, what: str = "timeout") -> float | None:
    """A duration in seconds from None (no limit), a number, a ``timedelta`` or a string such as
    ``"1s"``, ``"500ms"``, ``"2 minutes"`` or ``"inf"`` (as Dask's ``parse_timedelta``).  The one
    duration parser of the package, for the timeouts of calls and requests: a ValueError naming
    ``what`` for a string it cannot read or a negative duration, a TypeError for anything else."""
    if x is None:
        return None
    if isinstance(x, datetime.timedelta):
        x = x.total_seconds()
    elif isinstance(x, str):
        text = x.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz") if text != "inf" else text
        unit = text[len(number) :]
        try:
            x = float(number) * _TIME_UNITS[unit]
        except (KeyError, ValueError):
            raise ValueError(f"{what} must be a number of seconds or a duration such as '1s', not {x!r}") from None
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
        raise TypeError(f"{what} must be a number of seconds, a duration such as '1s', or None, not {x!r}")
    if x < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {x!r}: a duration is never negative")
    return float(x)


def _number(kind: type, low: float, high: float = math.inf, *, inf: bool = False) -> Callable[[Any], Any]:
    def parse(x: Any) -> Any:
        if isinstance(x, str):
            try:
                x = float(x) if kind is float else int(x)
            except ValueError:
                raise ValueError(f"expected {'a whole number' if kind is int else 'a number'}") from None
        if isinstance(x, bool) or not isinstance(x, int | float) or (kind is int and not isinstance(x, int)):
            raise ValueError(f"expected {'a whole number' if kind is int else 'a number'}")
        if not (low <= x <= high) or (x == math.inf and not inf):
            raise ValueError(f"expected a value from {low:g} to {high:g}")
        return kind(x)

    return parse


def _interval(x: Any) -> float:
    """A duration above zero and finite, as ``parse_timeout`` reads it (``"100ms"``, ``0.1``)."""
    seconds = parse_timeout(x, "the interval")
    if seconds is None or not 0 < seconds < math.inf:
        raise ValueError(f"expected a duration above 0 and finite, not {x!r}")
    return seconds


def _memory_limit(x: Any) -> float | int | None:
    """``"auto"``/None: a share of the machine; a fraction in (0, 1]; else bytes (0: none)."""
    if x is None or (isinstance(x, str) and x.strip().lower() in ("auto", "")):
        return None
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return parse_bytes(x)
    if isinstance(x, float) and 0 < x <= 1:
        return x
    return parse_bytes(x)


def _fraction_or_off(x: Any) -> float | bool:
    """A fraction in (0, 1], or False (also 0, "off", "none") to turn the action off."""
    if x is False or x == 0 or (isinstance(x, str) and x.strip().lower() in ("false", "off", "none", "0", "")):
        return False
    value = float(x) if isinstance(x, str) else x
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError("expected a fraction from 0 to 1, or false for off")
    return float(value)


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda x: None if x is None or x == "" else parse(x)


def _choice(*names: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    def parse(x: Any) -> str:
        name = str(x).strip().lower()
        name = (aliases or {}).get(name, name)
        if name not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return name

    return parse


#: what turns the dashboard off
_OFF = ("", "off", "none", "false", "no")


def dashboard_address(x: Any) -> str | None:
    """Where the scheduler serves its dashboard, as ``host:port``; None (also "off") for nowhere.

    Takes ``"host:port"``, ``":port"`` or a bare port (on 127.0.0.1), with or without
    ``http://``; port 0 picks a free one.
    """
    if x is None or x is False or (isinstance(x, str) and x.strip().lower() in _OFF):
        return None
    if isinstance(x, bool) or not isinstance(x, int | str):
        raise ValueError("expected host:port, a port number, or off")
    text = str(x).strip().removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, a port number (0-65535; 0 picks a free one), or off, not {x!r}")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _names(x: Any) -> tuple[str, ...]:
    """A list of names, or one string of them separated by commas."""
    if isinstance(x, str):
        x = [part.strip() for part in x.split(",") if part.strip()]
    if not isinstance(x, list | tuple) or not all(isinstance(n, str) and n for n in x):
        raise ValueError("expected a list of module names, or one string of them separated by commas")
    return tuple(x)


def _text(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError("expected a string")
    return x


@dataclass(frozen=True, slots=True)
class Setting:
    default: Any
    #: checks and converts a value (see the parsers above)
    parse: Callable[[Any], Any]
    doc: str
    #: a single-name RUNTIME_* variable code read before this tree existed, still honoured
    env: str = ""


#: The local schedulers and Dask's other names for them.
SCHEDULERS = ("distributed", "sync", "threads", "processes")
_SCHEDULER_ALIASES = {
    "synchronous": "sync", "single-threaded": "sync", "threading": "threads", "multiprocessing": "processes",
}  # fmt: skip

#: Every setting: key -> Setting.  docs/configuration.md lists them with their meaning.
SETTINGS: dict[str, Setting] = {
    "scheduler": Setting("distributed", _choice(*SCHEDULERS, aliases=_SCHEDULER_ALIASES),
        "what runs tasks: the distributed cluster, or in this process: sync, threads or processes"),
    "num-workers": Setting(None, _optional(_number(int, 1)),
        "worker processes of a local cluster, and threads/processes of the local schedulers (None: one per CPU)"),
    "processes.start-method": Setting("fork", _choice("fork", "spawn", "forkserver"),
        "how the processes scheduler starts its processes (spawn and forkserver import __main__ again)"),
    "inline-threshold": Setting(100 * 1024, parse_bytes,
        "values smaller than this travel inline in messages; larger ones, and call arguments as large, "
        "go through the node's store",
        env="RUNTIME_INLINE_THRESHOLD"),
    "log-level": Setting("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL",
        aliases={n.lower(): n for n in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}),
        "log level of the scheduler, node agent and worker processes", env="RUNTIME_LOG_LEVEL"),
    "scheduler.worker-saturation": Setting(1.1, _number(float, 0.0, inf=True),
        "root-ish tasks queue on the scheduler once every worker has ceil(this x threads) tasks (inf: never); "
        "the least a worker holds: short tasks get more, to cover a round trip (scheduler.round-trip)",
        env="RUNTIME_WORKER_SATURATION"),
    "scheduler.round-trip": Setting(0.001, _number(float, 0.0),
        "seconds a result takes to reach the scheduler and the next task its worker: a worker holds enough "
        "queued tasks of a kind to stay busy that long at their measured duration (0: worker-saturation only)"),
    "scheduler.worker-saturation-cap": Setting(16.0, _number(float, 1.0),
        "the most tasks per thread a worker holds however short they are"),
    "scheduler.chain-hints": Setting(True, _bool,
        "send a task's worker, with it, each dependent waiting for it alone, to start there as soon as it "
        "finishes (a chain goes on without a scheduler round trip per link)"),
    "comm.busy-poll": Setting(200e-6, _number(float, 0.0),
        "seconds a thread waiting on a blocking connection (an actor call's reply, the next call "
        "to an actor, a request to the scheduler) polls before it sleeps, so a round trip skips an "
        "idle CPU's wake-up; after a miss it sleeps at once for the next 1, 2, 4 ... 64 waits "
        "(0: never poll)"),
    "scheduler.allowed-failures": Setting(3, _number(int, 0),
        "a task running on this many workers that died, plus one, errs with KilledWorker"),
    "scheduler.transition-log-length": Setting(1000, _number(int, 1),
        "transitions the scheduler keeps for story(key) (Dask's distributed.admin.low-level-log-length)"),
    "scheduler.events-log-length": Setting(100_000, _number(int, 1),
        "events the scheduler keeps per topic for get_events (Dask's distributed.scheduler.events-log-length)"),
    "scheduler.record": Setting(None, _optional(_text),
        "a file the scheduler writes every stimulus it handles to, for `runtime replay FILE` (None: no recording)"),
    "scheduler.record-messages": Setting(False, _bool,
        "record the messages each stimulus made, not only their digest, so a replay that decides otherwise "
        "shows the difference (a larger file)"),
    "scheduler.dashboard.address": Setting("127.0.0.1:8787", dashboard_address,
        "where the scheduler serves its dashboard, /metrics and /api/v1 (host:port, :port; a port taken already "
        "means a free one instead; beyond the loopback only with a shared secret; off: no dashboard)",
        env="RUNTIME_DASHBOARD_ADDRESS"),
    "scheduler.validate": Setting(False, _bool,
        "check every invariant of the scheduler's state after every transition (slow; tests)",
        env="RUNTIME_VALIDATE"),
    "scheduler.locks.lease-timeout": Setting(30.0, parse_timeout,
        "seconds after which the lease of a Semaphore or Lock holder that stopped refreshing it is released "
        "(a holder whose process ends releases at once; 'inf': never)"),
    "scheduler.locks.lease-validation-interval": Setting(1.0, parse_timeout,
        "seconds between the scheduler's checks for leases past their lease-timeout"),
    "store.memory": Setting(None, _optional(parse_bytes),
        "bytes of shared memory for each node's object store (None: 30% of memory)",
        env="RUNTIME_OBJECT_STORE_MEMORY"),
    "store.spill-dir": Setting(None, _optional(_text),
        "where the store spills objects (None: $TMPDIR/runtime-<uid>/spill)", env="RUNTIME_SPILL_DIR"),
    "store.write-timeout": Setting(60.0, _number(float, 0.0),
        "seconds a writer waits for spilling to make room in a full store", env="RUNTIME_STORE_WRITE_TIMEOUT"),
    "store.reuse-fraction": Setting(0.25, _number(float, 0.0, 1.0),
        "share of the store's limit kept in freed files for reuse: writes into pages the kernel has already "
        "allocated run about twice as fast (0: free at once)", env="RUNTIME_STORE_REUSE_FRACTION"),
    "scheduler.amm-interval": Setting(2.0, _number(float, 0.0),
        "seconds between runs of the active memory manager, which drops copies nobody needs (0: off)",
        env="RUNTIME_AMM_INTERVAL"),
    "scheduler.work-stealing": Setting(True, _bool,
        "idle workers take tasks queued on busy ones, when moving their inputs costs less than the wait "
        "(Dask's distributed.scheduler.work-stealing)"),
    "scheduler.work-stealing-interval": Setting(0.1, _interval,
        "seconds between the scheduler's rounds of work stealing ('100ms', 0.1, ...)"),
    "client.attach-store": Setting(True, _bool,
        "a client that joins by address reads and writes the store of a node on its host directly, zero-copy "
        "(false: over the network, through the nodes' agents, as on a host with no node)"),
    "heartbeat.interval": Setting(1.0, _number(float, 0.001),
        "seconds between heartbeats of node agents and workers (at most half of heartbeat.timeout)",
        env="RUNTIME_HEARTBEAT_INTERVAL"),
    "heartbeat.timeout": Setting(10.0, _number(float, 0.001),
        "seconds of silence after which the scheduler removes a node, and an agent gives its scheduler up",
        env="RUNTIME_HEARTBEAT_TIMEOUT"),
    "heartbeat.client-timeout": Setting(60.0, _number(float, 0.001),
        "seconds a client waits for any word from its scheduler (it pings every heartbeat.interval) before "
        "it fails its pending futures: the scheduler froze or the network is cut"),
    "worker.start-method": Setting("forkserver", _choice("forkserver", "spawn"),
        "how a node agent starts its workers: forked from a template process that imported the runtime once "
        "(forkserver; Linux, elsewhere spawn), or each a new interpreter (spawn)"),
    "worker.preload": Setting(("numpy",), _names,
        "modules the forkserver's template imports once for all its workers, besides the runtime (those "
        "not installed are skipped)"),
    "worker.memory.limit": Setting(None, _memory_limit,
        "each worker's memory limit: bytes ('2GB'), a fraction of the machine's memory, 0 for none "
        "(None: the machine's memory shared out between a node's workers)", env="RUNTIME_MEMORY_LIMIT"),
    "worker.memory.spill": Setting(0.6, _fraction_or_off,
        "fraction of its memory limit at which a worker drops store mappings and its node spills (false: never)",
        env="RUNTIME_MEMORY_SPILL_FRACTION"),
    "worker.memory.pause": Setting(0.8, _fraction_or_off,
        "fraction of its memory limit at which a worker takes no new tasks (false: never)",
        env="RUNTIME_MEMORY_PAUSE_FRACTION"),
    "worker.memory.terminate": Setting(0.95, _fraction_or_off,
        "fraction of its memory limit at which its nanny restarts a worker (false: never)",
        env="RUNTIME_MEMORY_TERMINATE_FRACTION"),
    "worker.memory.monitor-interval": Setting(0.1, _number(float, 0.001),
        "seconds between two samples of a worker's memory", env="RUNTIME_MEMORY_MONITOR_INTERVAL"),
}  # fmt: skip

_LEGACY_ENV = {s.env: key for key, s in SETTINGS.items() if s.env}

# ----------------------------------------------------------------------------- state

_lock = threading.RLock()
#: what files said, by key
_from_files: dict[str, Any] = {}
#: what RUNTIME_* variables said, by key
_from_env: dict[str, Any] = {}
#: what set() said (the driver's, inherited by processes it starts), by key
_from_set: dict[str, Any] = {}
#: the effective value of every key: the layers above over the defaults
_config: dict[str, Any] = {}


def canonical(key: str) -> str:
    """``key`` as SETTINGS spells it; UnknownKeyError naming the closest known key if none."""
    if key in SETTINGS:
        return key
    name = key.strip().lower().replace("_", "-")
    if name in SETTINGS:
        return name
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(SETTINGS)}"
    raise UnknownKeyError(f"unknown config key {key!r}{hint}")


def _parsed(key: str, value: Any, source: str) -> Any:
    try:
        return SETTINGS[key].parse(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config key {key!r} = {value!r} ({source}) is invalid: {e}") from None


def get(key: str) -> Any:
    """The effective value of ``key`` (after files, variables and ``set``)."""
    try:
        return _config[key]
    except KeyError:
        return _config[canonical(key)]


def describe() -> dict[str, Any]:
    """Every key and its effective value."""
    return dict(_config)


def _rebuild() -> None:
    _config.clear()
    for key, setting in SETTINGS.items():
        _config[key] = setting.default
    _config.update(_from_files)
    _config.update(_from_env)
    _config.update(_from_set)


# ----------------------------------------------------------------------------- sources


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def config_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """The config files read, in order: ``$RUNTIME_CONFIG`` (file or directory) or ``~/.config/runtime/``."""
    environ = os.environ if environ is None else environ
    where = environ.get("RUNTIME_CONFIG") or os.path.join(
        environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config"), "runtime"
    )
    if os.path.isfile(where):
        return [where]
    if not os.path.isdir(where):
        return []
    return [
        os.path.join(where, name)
        for name in sorted(os.listdir(where))
        if name.endswith((".toml", ".yaml", ".yml")) and os.path.isfile(os.path.join(where, name))
    ]


def _read_file(path: str) -> dict[str, Any]:
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        else:
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigError(f"config file {path} is YAML, but PyYAML is not installed; use TOML") from None
            with open(path) as f:
                tree = yaml.safe_load(f) or {}
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file {path} must hold a table of settings, not {type(tree).__name__}")
    out = {}
    for name, value in _flatten(tree):
        try:
            key = canonical(name)
        except UnknownKeyError as e:
            raise UnknownKeyError(f"{e} (in config file {path})") from None
        out[key] = _parsed(key, value, f"in {path}")
    return out


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    nested = []
    for name, value in environ.items():
        if not name.startswith("RUNTIME_") or name in _RESERVED:
            continue
        if name in _LEGACY_ENV:
            out.setdefault(_LEGACY_ENV[name], (name, value))
            continue
        key = name[len("RUNTIME_") :].lower().replace("__", ".").replace("_", "-")
        if key in SETTINGS:
            nested.append((key, name, value))
        elif "__" in name:  # clearly meant for this tree: say what it should have been
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"RUNTIME_{close[0].replace('.', '__').replace('-', '_').upper()}" if close else ""
            warnings.warn(
                f"{name} names no config key{f'; did you mean {hint}?' if hint else ''}", stacklevel=3
            )  # fmt: skip
        # Other single-name RUNTIME_* variables belong to code outside this tree: leave them.
    for key, name, value in nested:  # the nested spelling wins over an old single name
        out[key] = (name, value)
    return {key: _parsed(key, value, f"from ${name}") for key, (name, value) in out.items()}


def refresh(environ: Mapping[str, str] | None = None) -> None:
    """Read the config files and RUNTIME_* variables again (``set`` values stay)."""
    environ = os.environ if environ is None else environ
    with _lock:
        files: dict[str, Any] = {}
        for path in config_paths(environ):
            files.update(_read_file(path))
        env = _read_env(environ)
        inherited = environ.get(INHERIT_VARIABLE)
        _from_files.clear()
        _from_files.update(files)
        _from_env.clear()
        _from_env.update(env)
        if inherited:
            for key, value in json.loads(inherited).items():
                _from_set.setdefault(key, _parsed(key, value, f"inherited from the driver in ${INHERIT_VARIABLE}"))
        _rebuild()


def serialize() -> str:
    """This process's ``set`` values as JSON, for ``INHERIT_VARIABLE`` of a process it starts."""
    with _lock:
        return json.dumps(_from_set)


# ----------------------------------------------------------------------------- set

_MISSING = object()


class set:  # noqa: N801 - named as Dask's dask.config.set, which users know
    """Change settings for the rest of the program, or, used with ``with``, for a block.

    ``config.set(scheduler="sync")``, ``config.set({"scheduler.worker-saturation": 2})``, or
    ``config.set(scheduler__worker_saturation=2)`` (``__`` nests).  Every key and value is
    checked before any is applied; on leaving a ``with`` block the previous values return.
    """

    def __init__(self, arg: Mapping[str, Any] | None = None, /, **kwargs: Any):
        items = {**(arg or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
        changes = {}
        for name, value in items.items():
            key = canonical(name)
            changes[key] = _parsed(key, value, "in config.set()")
        with _lock:
            #: what set() held for each changed key before, to put back on exit
            self._previous = {key: _from_set.get(key, _MISSING) for key in changes}
            _from_set.update(changes)
            _rebuild()

    def __enter__(self) -> set:
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            for key, value in self._previous.items():
                if value is _MISSING:
                    _from_set.pop(key, None)
                else:
                    _from_set[key] = value
            _rebuild()


refresh()
