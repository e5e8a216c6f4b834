"""``python -m runtime.worker``: one worker process, started by its node agent."""

from __future__ import annotations

import argparse
import json
import os

from runtime import procutil
from runtime.worker import memory
from runtime.worker.worker import Worker


async def _main(args: argparse.Namespace) -> None:
    worker = Worker(
        args.scheduler, args.node, args.prefix, f"{args.name}-{os.getpid()}", args.nthreads,
        json.loads(args.resources), args.memory_limit, args.agent, args.running_file,
        memory.Thresholds.from_args(args.memory_spill_fraction, args.memory_pause_fraction, None),
    )  # fmt: skip
    await procutil.serve_until_closed(worker.run(), worker.stop, worker.closed, args.watch_parent)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker")
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--nthreads", type=int, default=1)
    parser.add_argument("--agent", default="", help="its node agent's address, to fetch objects from other nodes")
    parser.add_argument("--running-file", default="", help="where to note the tasks it executes, for its agent")
    parser.add_argument("--resources", default="{}", help='abstract resources as JSON, e.g. {"GPU": 1}')
    parser.add_argument("--memory-limit", type=int, default=0, help="bytes (0: unknown)")
    for name in ("spill", "pause"):
        parser.add_argument(f"--memory-{name}-fraction", type=float, default=None, help="0: off")
    parser.add_argument("--watch-parent", action="store_true")
    args = parser.parse_args()
    procutil.run_process("worker", _main(args))
    # Executor threads may still be inside user code; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
