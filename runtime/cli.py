"""The ``runtime`` command: start, inspect and stop a cluster from a shell.

::

    runtime start --head               scheduler + node agent (+ its workers), in the background
    runtime start --address tcp://H:P  a node agent (+ its workers) joining that scheduler
    runtime status                     nodes, workers, tasks per state, tasks no worker can run
    runtime stop                       what this run directory started (a head: the whole cluster)
    runtime replay FILE                a recorded scheduler run, into a fresh state machine, offline

``start`` spawns the processes in a session of their own (they outlive the command) and
records them in a *run directory* (``--run-dir``, else ``$RUNTIME_RUN_DIR``, else
``$TMPDIR/runtime-<uid>/run``): ``scheduler.pid`` / ``agent.pid`` (pid and start time, so
a recycled pid is never signalled), ``address``, and ``logs/``.  It returns once the
scheduler answers and the agent has registered, or fails with the last line of the log of
the process that died.  ``--block`` stays in the foreground instead: the children watch
its pipe, and Ctrl-C stops them.

``status`` and ``stop`` talk to the scheduler with one short blocking connection
(``ask``), bounded by ``--timeout``: an address that does not answer is one line on
stderr and exit status 1, never a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil

from runtime import config, procutil
from runtime.comm import auth, codec
from runtime.comm import messages as m
from runtime.comm.core import parse_address, read_frame
from runtime.worker.memory import format_bytes

DEFAULT_PORT = 8786
#: the memory thresholds a worker acts on, and what it does
_THRESHOLDS = {"spill": "spills", "pause": "pauses", "terminate": "is restarted"}


class CliError(Exception):
    """A problem to report as one line on stderr, with exit status 1."""


def parse_bytes(text: str) -> int:
    """``"4GB"`` -> 4_000_000_000, ``"512MiB"`` -> 536_870_912, ``"1000"`` -> 1000."""
    try:
        value = config.parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4GB, 512MiB, 1000000)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 bytes")
    return value


def _setting_flag(key: str, what: str) -> Callable[[str], str]:
    """An argparse type that checks a flag as setting ``key`` would and passes the text on."""

    def check(text: str) -> str:
        try:
            config.SETTINGS[key].parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: {e}") from None
        return text

    return check


def parse_resources(text: str) -> dict[str, float]:
    """``'{"GPU": 1}'`` or ``GPU=1,foo=2`` -> {"GPU": 1.0, "foo": 2.0}."""
    text = text.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"resources {text!r} are not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise argparse.ArgumentTypeError(f"resources {text!r} must be a JSON object")
        items = list(raw.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, amount = part.partition("=")
            if not sep or not name.strip():
                raise argparse.ArgumentTypeError(f"resource {part!r} must look like NAME=AMOUNT, e.g. GPU=1")
            items.append((name.strip(), amount.strip()))
    out = {}
    for name, amount in items:
        try:
            value = float(amount)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"resource {name!r} has amount {amount!r}, not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"resource {name!r} has a negative amount {amount!r}")
        out[str(name)] = value
    return out


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free one)")
    return int(text)


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


#: a flag not given (None means "off" for --dashboard-address)
_UNSET: Any = object()


def _dashboard_address(text: str) -> str | None:
    try:
        return config.dashboard_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def default_run_dir() -> str:
    return os.environ.get("RUNTIME_RUN_DIR") or os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}", "run")


# -- talking to the scheduler ------------------------------------------------------------


def ask(address: str, msg: m.Message, timeout: float) -> Any:
    """Send one message as a short-lived client; for a ``request``, return its reply's result.

    Every step is bounded by ``timeout``; failures raise ``CliError`` naming the address.
    """
    scheme, host, port = parse_address(address)
    try:
        with auth.open_sync(scheme, host, port, timeout) as sock:
            client = f"client-cli-{os.urandom(4).hex()}"
            sock.sendall(codec.encode([m.RegisterClient(client), msg]))
            if type(msg) is not m.Request:
                return None
            while True:
                for reply in read_frame(sock, address, m.TO_CLIENT):
                    if type(reply) is m.Reply and reply.reqid == msg.reqid:
                        return reply.result
    except TimeoutError:
        raise CliError(f"the scheduler at {address} did not answer within {timeout:g}s") from None
    except codec.SecretRequiredError:
        raise CliError(
            f"the cluster at {address} requires a shared secret; give --secret-file FILE or set RUNTIME_SECRET "
            "or RUNTIME_SECRET_FILE (see docs/deployment.md)"
        ) from None
    except (OSError, ValueError) as e:  # ProtocolError and AuthenticationError are OSErrors
        raise CliError(f"cannot reach a scheduler at {address}: {e}") from None


def query(address: str, what: str, timeout: float) -> Any:
    return ask(address, m.Request(0, what), timeout)


# -- the run directory --------------------------------------------------------------------


def _write_pid(run_dir: str, name: str, pid: int) -> None:
    with open(os.path.join(run_dir, f"{name}.pid"), "w") as f:
        f.write(f"{pid} {psutil.Process(pid).create_time()}\n")


def running_pid(run_dir: str, name: str) -> int | None:
    """The pid in ``<name>.pid`` if that very process (same start time) still runs."""
    try:
        with open(os.path.join(run_dir, f"{name}.pid")) as f:
            pid_text, created = f.read().split()
        proc = psutil.Process(int(pid_text))
        if abs(proc.create_time() - float(created)) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc.pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _read_address(run_dir: str) -> str | None:
    try:
        with open(os.path.join(run_dir, "address")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("ADDRESS ")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


# -- start --------------------------------------------------------------------------------


def _spawn(cmd: list[str], log_path: str, block: bool) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        if block:  # the children watch our pipe: they stop when we do, even by SIGKILL
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def _wait_until(ready: Any, proc: subprocess.Popen, what: str, log_path: str, timeout: float) -> Any:
    """Poll ``ready()`` until it returns something; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = ready()
        if result:
            return result
        if proc.poll() is not None:
            raise CliError(f"the {what} exited at start-up: {_last_line(log_path) or 'see ' + log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise CliError(f"the {what} did not start within {timeout:g}s; see {log_path}")
        time.sleep(0.05)


def cmd_start(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    for name in ("scheduler", "agent"):
        pid = running_pid(run_dir, name)
        if pid is not None:
            raise CliError(
                f"a {name} started from {run_dir} is still running (pid {pid}): "
                "run `runtime stop` first, or give another --run-dir"
            )
    procs: list[subprocess.Popen] = []
    try:
        if args.head:
            address = _start_scheduler(args, logs, procs)
        else:
            address = args.address
            query(address, "identity", args.timeout)  # a clear error now beats an agent retrying
        _start_agent(args, address, logs, procs)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    stop = _stop_on_signals() if args.block else None  # before saying we started: a signal may follow at once
    what = "scheduler and node agent" if args.head else "node agent"
    print(f"started the {what} with {args.num_workers} worker(s), logs in {logs}")
    print(f"scheduler at {address}")
    if args.head:
        port = address.rpartition(":")[2]
        join = address if auth.is_loopback(args.host) else f"tcp://{socket.gethostname()}:{port}"
        print(f"join with: runtime start --address {join}")
        print(f"dashboard: {query(address, 'dashboard', args.timeout) or 'off'}")
    if stop is None:
        return 0
    sys.stdout.flush()  # before blocking: whoever reads our output (a pipe, a log) sees it now
    return _block(procs, stop)


def _start_scheduler(args: argparse.Namespace, logs: str, procs: list[subprocess.Popen]) -> str:
    listen = f"tcp://{args.host}:{args.port}"
    log_path = os.path.join(logs, "scheduler.log")
    with open(log_path, "w"):
        pass  # a fresh log: its ADDRESS line tells when the scheduler listens
    cmd = [sys.executable, "-m", "runtime.scheduler", "--address", listen]
    if args.block:
        cmd.append("--watch-parent")
    if args.record:
        cmd += ["--record", os.path.abspath(args.record)]
    if args.dashboard_address is not _UNSET:
        cmd += ["--dashboard-address", args.dashboard_address or "off"]
    proc = _spawn(cmd, log_path, args.block)
    procs.append(proc)

    def listening() -> str | None:
        with open(log_path, errors="replace") as f:
            for line in f:
                if line.startswith("ADDRESS "):
                    return line.split()[1]
        return None

    bound = _wait_until(listening, proc, "scheduler", log_path, args.timeout)
    _write_pid(args.run_dir, "scheduler", proc.pid)
    # Listening on every interface: reach it through the loopback from here.
    _, host, port = parse_address(bound)
    address = f"tcp://127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else bound
    with open(os.path.join(args.run_dir, "address"), "w") as f:
        f.write(address + "\n")
    return address


def _start_agent(args: argparse.Namespace, address: str, logs: str, procs: list[subprocess.Popen]) -> None:
    node = f"{socket.gethostname()}-{os.urandom(4).hex()}"
    log_path = os.path.join(logs, "agent.log")
    cmd = [
        sys.executable, "-m", "runtime.worker.agent", "--scheduler", address, "--node", node,
        "--num-workers", str(args.num_workers), "--threads-per-worker", str(args.threads_per_worker),
        "--log-dir", logs, "--resources", json.dumps(args.resources), "--host", args.host,
        *(["--memory-limit", args.memory_limit] if args.memory_limit is not None else []),
        *(flag for name in _THRESHOLDS if (v := getattr(args, f"memory_{name}_fraction")) is not None
          for flag in (f"--memory-{name}-fraction", v)),
        *(["--object-store-memory", str(args.object_store_memory)] if args.object_store_memory else []),
        *(["--watch-parent"] if args.block else []),
    ]  # fmt: skip
    proc = _spawn(cmd, log_path, args.block)
    procs.append(proc)

    def joined() -> bool:  # the node and all its workers
        workers = query(address, "identity", args.timeout)["workers"].values()
        return sum(w["node"] == node for w in workers) >= args.num_workers

    _wait_until(joined, proc, "node agent", log_path, 60)
    _write_pid(args.run_dir, "agent", proc.pid)
    if not args.head:
        with open(os.path.join(args.run_dir, "address"), "w") as f:
            f.write(address + "\n")


def _stop_on_signals() -> threading.Event:
    """An event SIGINT and SIGTERM set (instead of ending this process)."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def _block(procs: list[subprocess.Popen], stop: threading.Event) -> int:
    """Stay in the foreground until a child exits or we are told to stop; then stop them all."""
    while not stop.wait(0.2) and all(p.poll() is None for p in procs):
        pass
    code = 0 if stop.is_set() else 1
    for p in reversed(procs):  # the agent first: it stops its workers and empties its store
        if p.stdin is not None:
            p.stdin.close()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return code


# -- status and stop -----------------------------------------------------------------------


def _scheduler_address(args: argparse.Namespace) -> str:
    address = args.address or _read_address(args.run_dir)
    if address is None:
        raise CliError(f"no cluster was started from {args.run_dir}: give --address tcp://HOST:PORT or --run-dir")
    return address


def _use(used: int, limit: int) -> str:
    return f"{format_bytes(used)} of {format_bytes(limit)}" if limit else f"{format_bytes(used)} (no limit)"


def format_status(address: str, s: dict) -> str:
    lines = [f"scheduler {address}", f"dashboard: {s.get('dashboard') or 'off'}", f"nodes: {len(s['nodes'])}"]
    for node, info in sorted(s["nodes"].items()):
        store = info.get("store")
        where = ""
        if store:
            where = f"  store {_use(store['used'], store['limit'])}, {format_bytes(store['spilled'])} spilled"
        lines.append(f"  {node}  host {info['host']}  pid {info['pid']}  workers {len(info['workers'])}{where}")
    workers = s["workers"]
    threads = sum(w["nthreads"] for w in workers.values())
    used, limit = (sum(w[k] for w in workers.values()) for k in ("memory", "memory_limit"))
    lines.append(f"workers: {len(workers)} ({threads} threads, memory {_use(used, limit)})")
    for address_, w in sorted(workers.items()):
        res = "  resources " + ",".join(f"{k}={v:g}" for k, v in w["resources"].items()) if w["resources"] else ""
        lines.append(
            f"  {address_}  {w['status']}  threads {w['nthreads']}  memory {_use(w['memory'], w['memory_limit'])}  "
            f"processing {w['processing']}{res}"
        )
    tasks = s["tasks"]
    detail = ", ".join(f"{state} {n}" for state, n in sorted(tasks.items()))
    lines.append(f"tasks: {sum(tasks.values())}" + (f" ({detail})" if detail else ""))
    if s["no_worker_total"]:
        lines.append(f"tasks no worker can run: {s['no_worker_total']}")
        lines.extend(f"  {key}: {why}" for key, why in s["no_worker"])
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    address = _scheduler_address(args)
    while True:
        s = query(address, "status", args.timeout)
        text = json.dumps(s, indent=2) if args.json else format_status(address, s)
        if args.watch is None:
            print(text)
            return 0
        # In place: home the cursor, print, clear what a longer screen before left below.
        sys.stdout.write(f"\x1b[H{text.replace(chr(10), chr(27) + '[K' + chr(10))}\x1b[K\x1b[J\n")
        sys.stdout.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it still runs after ``timeout`` seconds."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + timeout
    while procutil.running(pid):  # a zombie init has yet to reap has ended
        if time.monotonic() > deadline:
            proc.kill()
            return
        time.sleep(0.02)


def cmd_stop(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    scheduler, agent = running_pid(run_dir, "scheduler"), running_pid(run_dir, "agent")
    if scheduler is None and agent is None:
        print(f"nothing started from {run_dir} is running")
        return 0
    if scheduler is not None:
        address = _read_address(run_dir)
        if address is not None:
            try:  # every node agent closes (and empties its store), then the scheduler goes
                ask(address, m.CloseCluster(), args.timeout)
                deadline = time.monotonic() + args.timeout
                while query(address, "identity", args.timeout)["nodes"] and time.monotonic() < deadline:
                    time.sleep(0.1)
            except CliError as e:
                print(f"runtime stop: {e}; stopping the processes of {run_dir} directly", file=sys.stderr)
    for name, pid in (("agent", agent), ("scheduler", scheduler)):
        if pid is not None:
            _terminate(pid, args.timeout)
        try:
            os.unlink(os.path.join(run_dir, f"{name}.pid"))
        except FileNotFoundError:
            pass
    stopped = " and ".join(n for n, p in (("scheduler", scheduler), ("node agent", agent)) if p is not None)
    print(f"stopped the {stopped} started from {run_dir}")
    return 0


def _apply_security(args: argparse.Namespace) -> None:
    """Put the security flags in the environment: this process and every one it starts use them."""
    for flag, var in (
        ("secret_file", "SECRET_FILE"),
        ("tls_cert", "TLS_CERT"),
        ("tls_key", "TLS_KEY"),
        ("tls_ca", "TLS_CA"),
    ):
        path = getattr(args, flag, None)  # replay has none of them
        if path:
            if not os.path.isfile(path):
                raise CliError(f"--{flag.replace('_', '-')} {path}: no such file")
            os.environ[f"RUNTIME_{var}"] = os.path.abspath(path)
    try:
        security = auth.default_security()
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.command == "start":
        try:
            auth.check_listen("tcp", args.host, security)
        except ValueError as e:
            raise CliError(str(e)) from None


# -- the parser -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block: ``runtime start: error: ... (see --help)``."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runtime",
        description="Start, inspect and stop a runtime cluster.",
        epilog="examples:\n  runtime start --head\n  runtime start --address tcp://host-a:8786\n"
        "  runtime status\n  runtime stop\nsee docs/deployment.md for several hosts, secrets and TLS",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--run-dir", default=default_run_dir(),
            help="where pid files, the address and logs live (default: $RUNTIME_RUN_DIR or $TMPDIR/runtime-<uid>/run)",
        )  # fmt: skip
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
        p.add_argument("--secret-file", help="file holding the cluster's shared secret (or set RUNTIME_SECRET)")
        p.add_argument("--tls-cert", help="TLS certificate (PEM) of this host")
        p.add_argument("--tls-key", help="its private key (PEM)")
        p.add_argument("--tls-ca", help="CA certificate (PEM): peers must present a certificate it signed")

    start = sub.add_parser("start", help="start a head node (scheduler and agent) or a node joining one")
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--head", action="store_true", help="run the scheduler here, plus a node agent")
    where.add_argument(
        "--address", type=_address, metavar="tcp://HOST:PORT", help="join the scheduler at tcp://HOST:PORT"
    )
    start.add_argument(
        "--port", type=_port, metavar="PORT", default=DEFAULT_PORT, help=f"scheduler port (default {DEFAULT_PORT})"
    )
    start.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    start.add_argument(
        "--num-workers", type=_positive_int, metavar="N", default=os.cpu_count() or 1, help="default: one per CPU"
    )
    start.add_argument("--threads-per-worker", type=_positive_int, default=1, metavar="N", help="default 1")
    start.add_argument(
        "--memory-limit",
        type=_setting_flag("worker.memory.limit", "a size"),
        metavar="LIMIT",
        help="each worker's: 4GB, 512MiB, bytes, a fraction of this machine's memory, 0 for none "
        "(default: the machine's memory shared out between the workers)",
    )
    for name in _THRESHOLDS:
        start.add_argument(
            f"--memory-{name}-fraction",
            type=_setting_flag(f"worker.memory.{name}", "a fraction"),
            metavar="F",
            help=f"fraction of the memory limit at which a worker {_THRESHOLDS[name]} "
            f"(default {config.SETTINGS[f'worker.memory.{name}'].default}; 0: never)",
        )
    start.add_argument(
        "--object-store-memory", type=parse_bytes, metavar="SIZE", help="the node's shared-memory store size"
    )
    start.add_argument(
        "--resources", type=parse_resources, metavar="RES", default={}, help='each worker\'s, e.g. GPU=1 or {"GPU":1}'
    )
    start.add_argument(
        "--record", metavar="FILE", help="the scheduler writes every stimulus to FILE, for `runtime replay FILE`"
    )
    start.add_argument(
        "--dashboard-address", type=_dashboard_address, default=_UNSET, metavar="HOST:PORT",
        help="serve the dashboard at HOST:PORT or :PORT; off for none (default: the scheduler.dashboard.address "
        "setting, 127.0.0.1:8787; beyond the loopback only with a shared secret)",
    )  # fmt: skip
    start.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C stops everything")
    common(start)
    start.set_defaults(func=cmd_start)

    status = sub.add_parser("status", help="nodes, workers, tasks per state, tasks no worker can run")
    status.add_argument("--address", type=_address, help="the scheduler (default: the run directory's)")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument(
        "--watch", type=float, nargs="?", const=1.0, metavar="SECONDS",
        help="refresh in place every SECONDS (default 1) until Ctrl-C",
    )  # fmt: skip
    common(status)
    status.set_defaults(func=cmd_status)

    stop = sub.add_parser("stop", help="stop what this run directory started (a head stops the whole cluster)")
    common(stop)
    stop.set_defaults(func=cmd_stop)

    replay = sub.add_parser(
        "replay", help="feed a scheduler's recorded stimuli (scheduler.record) into a fresh state machine, offline"
    )
    replay.add_argument("file", help="the stimulus log")
    replay.add_argument("--stop-at", metavar="STIMULUS", help="stop after this stimulus (its id, or its number)")
    replay.add_argument("--story", metavar="KEY", action="append", default=[], help="print KEY's story (repeatable)")
    replay.add_argument("--no-validate", action="store_true", help="do not check every invariant (faster)")
    replay.add_argument("--interact", action="store_true", help="then open a Python prompt with `state` in it")
    replay.set_defaults(func=cmd_replay)
    return parser


def cmd_replay(args: argparse.Namespace) -> int:
    from runtime.scheduler import record  # the state machine: only this command needs it

    try:
        state, n = record.replay(args.file, args.stop_at, validate=not args.no_validate)
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None
    except record.ReplayError as e:
        raise CliError(str(e)) from None
    counts: dict[str, int] = {}
    for ts in state.tasks.values():
        counts[ts.state] = counts.get(ts.state, 0) + 1
    where = f", stopped at {args.stop_at}" if args.stop_at else ""
    print(f"replayed {n} stimuli from {args.file}{where}: every decision as recorded")
    print(f"tasks: {len(state.tasks)}" + "".join(f", {s} {c}" for s, c in sorted(counts.items())))
    print(f"workers: {len(state.workers)}, nodes: {len(state.nodes)}, clients: {len(state.clients)}")
    for key in args.story:
        print(f"story of {key}:")
        for key_, start, finish, recs, sid in state.story(key):
            print(f"  {sid}: {key_} {start} -> {finish}" + (f"  recommends {recs}" if recs else ""))
    if args.interact:
        import code

        code.interact(banner="the replayed SchedulerState is `state`", local={"state": state}, exitmsg="")
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "start" and not args.head and args.port != DEFAULT_PORT:
        parser.error("--port is the scheduler's port: it goes with --head, not --address")
    try:
        _apply_security(args)
        code = args.func(args)
    except CliError as e:
        print(f"runtime {args.command}: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
