"""The `docflow` command: thin dispatch to localcloud and the flows (imports are lazy)."""

from __future__ import annotations

import argparse
import sys


def _local_up(args: argparse.Namespace) -> int:
    from localcloud.server import serve_forever

    return serve_forever(host=args.host, port=args.port, state_dir=args.state_dir)


def _demo(args: argparse.Namespace) -> int:
    import os

    from docflow.demo import run_demo
    from docflow.errors import UserError, answers, localcloud_down

    url = os.environ.get("DOCFLOW_ENDPOINT_URL")
    if url and not answers(url):  # else the demo starts a localcloud of its own
        raise UserError(localcloud_down(url))

    return run_demo(corpus=args.corpus)


def _ui(args: argparse.Namespace) -> int:
    import os

    from docflow.ui import run_ui

    if args.workers is not None:
        os.environ["DOCFLOW_UI_WORKERS"] = str(args.workers)

    return run_ui()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each sub-command names the function that serves it."""
    parser = argparse.ArgumentParser(prog="docflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="localcloud: the embedded AWS")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="run localcloud in the foreground (Ctrl-C stops it)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=4566)
    up.add_argument(
        "--state-dir",
        help="keep S3 (buckets, objects) in this folder across restarts (`make ui` uses "
        ".prefect/localcloud); default: in memory only",
    )
    up.set_defaults(func=_local_up)

    demo = sub.add_parser("demo", help="package, deploy and process the sample corpus locally")
    demo.add_argument("--corpus", default="datasets/sample")
    demo.set_defaults(func=_demo)

    ui = sub.add_parser("ui", help="Prefect server, localcloud, work pool, worker and deployments")
    ui.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers on the local pool (default 1, or DOCFLOW_UI_WORKERS); a sharded run "
        "spreads its shards over them",
    )
    ui.set_defaults(func=_ui)

    from docflow.ask import add_parser as add_ask
    from docflow.estimate import add_parser as add_estimate
    from docflow.runs import add_parser as add_runs

    add_runs(sub)
    add_estimate(sub)
    add_ask(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `docflow` console script.

    A sub-command with a ``--profile`` is checked first (``docflow.errors.preflight``); an
    expected failure prints one line naming the fix and exits 2 (DOCFLOW_DEBUG=1: the traceback).
    """
    import os

    from docflow.errors import one_line, preflight

    # Before Prefect's settings load: local runs send no telemetry (nor log failing to send it).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "profile", None):
            preflight(args.profile)
        return int(args.func(args) or 0)
    except Exception as exc:
        line = one_line(exc)
        if line is None or os.environ.get("DOCFLOW_DEBUG"):
            raise
        sys.stderr.write(f"docflow {args.command}: {line}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
