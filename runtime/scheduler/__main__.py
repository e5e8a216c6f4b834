"""``python -m runtime.scheduler --address ADDR``: run a scheduler until told to stop.

Prints ``ADDRESS <addr>`` on stdout once listening.  With ``--watch-parent`` it exits when
its stdin closes (the process that started it is gone).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from runtime import config, procutil
from runtime.scheduler.server import Scheduler


async def _main(args: argparse.Namespace) -> None:
    scheduler = Scheduler(
        validate=args.validate, allowed_failures=args.allowed_failures, worker_saturation=args.worker_saturation,
        amm_interval=args.amm_interval, record_to=args.record, dashboard_address=args.dashboard_address,
    )  # fmt: skip
    sock = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
    address = await scheduler.start(args.address, sock)
    print(f"ADDRESS {address}", flush=True)
    await procutil.serve_until_closed(None, scheduler.close, scheduler.closed, args.watch_parent)
    if address.startswith("unix://"):
        try:
            os.unlink(address[len("unix://") :])
        except FileNotFoundError:
            pass


def _dashboard_address(text: str) -> str | None:
    try:
        return config.dashboard_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.scheduler")
    parser.add_argument("--address", default="tcp://127.0.0.1:8786")
    parser.add_argument("--watch-parent", action="store_true")
    parser.add_argument(
        "--listen-fd", type=int, default=None,
        help="a Unix socket already bound to --address and listening (LocalCluster makes it, so that its "
        "processes can connect before the scheduler is ready)",
    )  # fmt: skip
    parser.add_argument("--validate", action="store_true", default=config.get("scheduler.validate"))
    parser.add_argument("--allowed-failures", type=int, default=config.get("scheduler.allowed-failures"))
    parser.add_argument(
        "--worker-saturation",
        type=float,
        default=config.get("scheduler.worker-saturation"),
        help="root-ish tasks queue on the scheduler once every worker has ceil(this x threads) tasks (inf: never)",
    )
    parser.add_argument(
        "--amm-interval", type=float, default=config.get("scheduler.amm-interval"),
        help="seconds between runs of the active memory manager, which drops copies nobody needs (0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--record", metavar="FILE", default=config.get("scheduler.record"),
        help="write every stimulus to FILE, for `runtime replay FILE` (default: the scheduler.record setting)",
    )  # fmt: skip
    parser.add_argument(
        "--dashboard-address", type=_dashboard_address, default=config.get("scheduler.dashboard.address"),
        help="serve the dashboard, /metrics and /api/v1 at host:port or :port (off: not at all; "
        "default: the scheduler.dashboard.address setting)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    procutil.run_process("scheduler", _main(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
