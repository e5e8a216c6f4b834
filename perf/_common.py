"""Helpers for the perf scripts: timing, summary statistics, table printing,
machine-wide memory sampling, and running one system per child process and session.

Kept free of any imports of the systems under test, so the parent process
that prints the table never loads runtime, Dask or Ray itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SHM_DIR = "/dev/shm"


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Run ``fn()`` and return (elapsed seconds, its result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@dataclass(frozen=True)
class Metric:
    """One line of the result table."""

    key: str  # key in the child's JSON
    label: str  # what the table shows
    unit: str
    higher_is_better: bool

    def summarize(self, samples: Sequence[float]) -> float:
        """Median of the repeats (the figure we report)."""
        return statistics.median(samples)

    def better_of(self, a: float, b: float) -> int:
        """Return 0 if ``a`` is better, 1 if ``b`` is better (ties go to ``a``)."""
        if self.higher_is_better:
            return 0 if a >= b else 1
        return 0 if a <= b else 1


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    if 0 < abs(value) < 0.1:  # small figures (GB/s of tiny objects): two significant digits
        return f"{value:.2g}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(metric: Metric, ours: float | None, theirs: float | None, theirs_name: str) -> str:
    """``ours/theirs`` with the name of whichever system wins this line."""
    if ours is None or theirs is None or theirs == 0:
        return "-"
    winner = "runtime" if metric.better_of(ours, theirs) == 0 else theirs_name
    return f"{ours / theirs:.2f} ({winner})"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


# --------------------------------------------------------------------------
# Machine-wide memory: what every process together uses, /dev/shm included.
# --------------------------------------------------------------------------


_PCP_COUNT = re.compile(rb"^\s+count:\s+(\d+)", re.MULTILINE)
_MEMINFO = re.compile(rb"^(MemTotal|MemAvailable):\s+(\d+) kB", re.MULTILINE)


def used_memory() -> int:
    """Bytes in use on the whole machine: MemTotal - MemAvailable - free pages in per-CPU lists.

    Shared memory (``/dev/shm``, Ray's plasma store) is not "available", so it
    counts; so does every process's private memory.  Other work on the machine
    counts too, which is why the benchmarks want an otherwise idle machine.

    The kernel keeps some free pages in per-CPU lists, which MemFree (and so
    MemAvailable) leaves out; since Linux 6.7 those lists grow with the workload,
    to tens of MB per CPU, so a freed array can look in use for a while and the
    next allocation look free.  Their size (the ``count:`` lines of
    /proc/zoneinfo) is subtracted.  Where /proc is missing, psutil's figure.
    """
    try:
        with open("/proc/meminfo", "rb") as f:
            fields = dict(_MEMINFO.findall(f.read()))
        with open("/proc/zoneinfo", "rb") as f:
            pcp_pages = sum(int(n) for n in _PCP_COUNT.findall(f.read()))
        return (int(fields[b"MemTotal"]) - int(fields[b"MemAvailable"])) * 1024 - pcp_pages * _PAGE_SIZE
    except (OSError, KeyError):
        import psutil

        vm = psutil.virtual_memory()
        return vm.total - vm.available


class MemorySampler:
    """Samples ``used_memory()`` in a background thread every ``interval`` seconds.

    ``with MemorySampler() as s: ...`` takes one sample on entry and one on exit
    besides the periodic ones; ``s.peak`` is the highest seen, ``s.samples`` how many.
    A thread needs the GIL to sample, so a C call that holds the GIL for long can
    delay a sample (it cannot hide memory that is still in use when it returns).
    """

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> int:
        used = used_memory()
        self.peak = max(self.peak, used)
        self.samples += 1
        return used

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def settled_memory(timeout: float = 5.0, window: float = 0.3, tolerance: int = 4 << 20) -> int:
    """Wait until machine-wide used memory stops moving; returns the settled level.

    Settled means: over ``window`` seconds it moved less than ``tolerance`` bytes
    (default 4 MiB).  Gives up after ``timeout`` seconds and returns the last level.
    """
    deadline = time.monotonic() + timeout
    while True:
        first = used_memory()
        levels = [first]
        end = time.monotonic() + window
        while time.monotonic() < end:
            time.sleep(0.02)
            levels.append(used_memory())
        if max(levels) - min(levels) < tolerance or time.monotonic() > deadline:
            return int(statistics.median(levels))


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def proc_stats() -> Iterator[tuple[int, str, list[str]]]:
    """``(pid, name, fields after "pid (name) ")`` of every process in /proc (none elsewhere)."""
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :].split()


def system_version(module: str, name: str) -> str:
    """The installed version of a benchmarked system (its distribution, else its __version__)."""
    import importlib.metadata
    import sys

    for dist in (module, name):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return str(getattr(sys.modules.get(module), "__version__", "unknown"))


def foreign_memory() -> int:
    """Bytes that work other than this process's own tree holds: a disturbance gauge.

    The private (anonymous) resident memory of every process that is neither this
    process, nor one of its descendants, nor in its session; plus the /dev/shm files
    of runtime stores (``rt-<pid>-...``) whose owner is such a process.  Comparing it
    before and after a measurement tells whether other work on the machine moved the
    machine-wide figure meanwhile.  Linux only (0 elsewhere).
    """
    if not os.path.isdir("/proc"):
        return 0
    me = os.getpid()
    sid = os.getsid(0)
    parent: dict[int, int] = {}
    session: dict[int, int] = {}
    for pid, _, fields in proc_stats():
        parent[pid] = int(fields[1])
        session[pid] = int(fields[3])

    def ours(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == me or session.get(pid) == sid:
                return True
            pid = parent.get(pid, 0)
            seen += 1
        return False

    total = 0
    for pid in parent:
        if not ours(pid):
            total += _status_kb(pid, "RssAnon:") * 1024
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        entries = []
    for entry in entries:
        owner = runtime_shm_owner(entry)
        if owner is not None and not ours(owner):
            try:
                total += os.stat(os.path.join(SHM_DIR, entry)).st_blocks * 512
            except OSError:
                pass
    return total


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu  user nice system idle iowait irq softirq steal ..."
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def _tree_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children, and its live descendants."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    me = os.getpid()
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for pid, _, fields in proc_stats():
        parent[pid] = int(fields[1])
        # utime stime cutime cstime are fields 14-17 of stat, 11-14 after "(comm) "
        times[pid] = sum(int(x) for x in fields[11:15]) / _CLK_TCK
    for pid, cpu in times.items():
        up, hops = parent.get(pid, 0), 0
        while up > 1 and up != me and hops < 64:
            up, hops = parent.get(up, 0), hops + 1
        if up == me and pid != me:
            total += cpu
    return total


def live_descendants() -> dict[int, str]:
    """{pid: name} of this process's live (not zombie) descendants (Linux /proc; {} elsewhere)."""
    me = os.getpid()
    parent: dict[int, int] = {}
    names: dict[int, str] = {}
    for pid, name, fields in proc_stats():
        parent[pid] = int(fields[1])
        if fields[0] != "Z":
            names[pid] = name
    found = {}
    for pid, name in names.items():
        up, hops = parent.get(pid, 0), 0
        while up > 1 and up != me and hops < 64:
            up, hops = parent.get(up, 0), hops + 1
        if up == me:
            found[pid] = name
    return found


#: helpers that Python's multiprocessing starts once and keeps until the driver exits, by design
_DRIVER_HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")


def _is_driver_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(h in cmdline for h in _DRIVER_HELPERS)


def wait_for_descendants(timeout: float = 15.0) -> dict[int, str]:
    """Wait until this process has no live descendants; returns those still alive at ``timeout``.

    multiprocessing's resource tracker and forkserver (Dask starts them) do not count:
    they stay until the driver exits.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: comm for pid, comm in live_descendants().items() if not _is_driver_helper(pid)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


class OtherWork:
    """How many CPUs other work on the machine kept busy while the ``with`` block ran.

    Busy CPU time of the whole machine (/proc/stat) less that of this process and
    its descendants, over the wall time: ``cpus`` is 0.0 on an idle machine, 1.0 if
    something else kept one CPU busy all along.  Linux only (``cpus`` None elsewhere).
    """

    def __init__(self) -> None:
        self.cpus: float | None = None

    def __enter__(self) -> OtherWork:
        try:
            self._start = (time.perf_counter(), _busy_cpu_seconds(), _tree_cpu_seconds())
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        try:
            wall, busy, ours = time.perf_counter(), _busy_cpu_seconds(), _tree_cpu_seconds()
        except OSError:
            return
        w0, b0, o0 = self._start
        if wall > w0:
            self.cpus = max(0.0, ((busy - b0) - (ours - o0)) / (wall - w0))


# --------------------------------------------------------------------------
# Parent side: run one system in a child process and session, clean up after it.
# --------------------------------------------------------------------------


def session_members(sid: int) -> dict[int, str]:
    """{pid: name} of live processes in session ``sid`` (Linux /proc; {} elsewhere)."""
    # fields: state ppid pgrp session ...; zombies are skipped.
    return {pid: name for pid, name, fields in proc_stats() if fields[0] != "Z" and int(fields[3]) == sid}


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, every process left in session ``sid``, by pid."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = session_members(sid)
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


def run_child(
    name: str, cmd: Sequence[str], timeout: float, verbose: bool = False, stderr_lines: int = 15
) -> tuple[dict, set[int]]:
    """Run ``cmd`` (a ``--system NAME --json`` child) in a fresh session; clean up what it leaves.

    Returns (the last JSON object the child printed, or a status; every pid seen in
    the child's session, polled twice a second, so that files named after a process
    of the child can be told from other work's).  Output goes to temporary files, not
    pipes, so a stray grandchild that keeps the child's stdout open cannot make us
    wait for it.
    """
    import json
    import subprocess
    import sys
    import tempfile

    result: dict = {"system": name}
    seen: set[int] = set()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=None if verbose else err, text=True, start_new_session=True
        )
        seen.add(proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            seen.update(session_members(proc.pid))
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    kill_session(proc.pid)
                    proc.wait()
                    result["status"] = f"timeout after {timeout:.0f} s"
                    break
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if "status" not in result:
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                    break
                except json.JSONDecodeError:
                    pass
        else:
            result["status"] = f"failed (exit {proc.returncode})"
    if result.get("status") not in ("ok", "not installed") and stderr:
        tail = "\n".join(stderr.strip().splitlines()[-stderr_lines:])
        print(f"--- {name} stderr (last lines) ---\n{tail}\n", file=sys.stderr)
    # Safety net: anything still in the child's session was left behind.
    time.sleep(0.5)
    stray = [f"{comm}({pid})" for pid, comm in session_members(proc.pid).items()]
    if stray:
        print(f"warning: {name} left processes behind, killing: {', '.join(stray)}", file=sys.stderr)
        result["stray_processes"] = stray
        kill_session(proc.pid)
    return result, seen


def shm_entries() -> set[str]:
    """Names in /dev/shm (empty set where there is none)."""
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


def runtime_shm_owner(entry: str) -> int | None:
    """The pid in a runtime store object's name ``rt-<pid>-...``, else None."""
    parts = entry.split("-", 2)
    if len(parts) == 3 and parts[0] == "rt" and parts[1].isdigit():
        return int(parts[1])
    return None


def clean_new_shm(before: set[str], name: str, owners: set[int]) -> list[str]:
    """Report the /dev/shm files a child left; remove its runtime store files.

    Of the entries that appeared since ``before``, a runtime store file
    (``rt-<pid>-...``) whose pid was one of the child's (``owners``) and is gone now
    was left behind: it is reported and removed.  Entries that other work on the
    machine made meanwhile (a test suite's store, say) are not touched.  Returns the
    names left behind.
    """
    import sys

    import psutil

    left = []
    for entry in sorted(shm_entries() - before):
        owner = runtime_shm_owner(entry)
        if owner is not None and owner in owners and not psutil.pid_exists(owner):
            left.append(entry)
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
            except OSError:
                pass
    if left:
        print(f"warning: {name} left {len(left)} file(s) in {SHM_DIR} (removed): {', '.join(left[:5])}"
              f"{' ...' if len(left) > 5 else ''}", file=sys.stderr)  # fmt: skip
    return left


def parse_bench_args(
    argv: Sequence[str] | None, doc: str, systems: Sequence[str], quick_help: str, repeat_help: str, save: bool = False
) -> argparse.Namespace:
    """The command line every comparison benchmark takes (``--only``, ``--quick``, ``--repeat``, ...)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--only", default=",".join(systems), help="comma-separated systems (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--repeat", type=int, default=None, help=repeat_help)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per system (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    if save:
        p.add_argument(
            "--save", metavar="FILE", help="also write all results, every sample and detail, as JSON to FILE"
        )
    p.add_argument("--verbose", action="store_true", help="let the systems' log output through")
    p.add_argument("--system", choices=systems, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(systems)
    if unknown:
        p.error(f"unknown system(s) in --only: {', '.join(sorted(unknown))}")
    return args


def _compile_runtime() -> None:
    """Write runtime's bytecode if it is missing (``make bytecode``): Dask and Ray come from
    wheels, compiled at install, while an editable install under PYTHONDONTWRITEBYTECODE would
    compile its modules again in every process and charge start-up for it."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("runtime")  # found, not imported: this process loads no system
    if spec is not None and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            compileall.compile_dir(where, quiet=1)


def drive(
    args: argparse.Namespace, script: str, bench_system: Callable[[str, Any, int], dict[str, Any]],
    print_table: Callable[[dict[str, dict[str, Any]], argparse.Namespace], None], quick: Any, full: Any,
) -> int:  # fmt: skip
    """The main of a side-by-side benchmark: as a child (``--system``), run one system and
    print its JSON; as the parent, run each system in a child of its own and print one table."""
    if args.system:
        result = bench_system(args.system, quick if args.quick else full, args.repeat)
        print(json.dumps(result), flush=True)
        return 0 if result["status"] in ("ok", "not installed") else 1
    _compile_runtime()
    results = {}
    for name in args.only:
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, os.path.abspath(script), "--system", name, "--json", "--repeat", str(args.repeat)]
        results[name], _ = run_child(name, cmd + (["--quick"] if args.quick else []), args.timeout, args.verbose)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args)
    return 0 if all(r.get("status") in ("ok", "not installed") for r in results.values()) else 1
