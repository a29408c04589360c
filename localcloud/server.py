"""``docflow local up``: run localcloud in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from types import FrameType

from localcloud.cloud import LocalCloud


def export_lines(env: dict[str, str]) -> str:
    """``export KEY=value`` lines a shell can eval."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def serve_forever(host: str = "127.0.0.1", port: int = 4566) -> int:
    """Start localcloud, print the environment a shell needs, block until interrupted; returns an exit code."""
    cloud = LocalCloud(port=port, host=host)
    try:
        cloud.start()
    except OSError as exc:
        print(
            f"localcloud: cannot listen on {host}:{port} ({exc}). Another localcloud may be running; "
            "stop it or pick a free port with --port.",
            file=sys.stderr,
        )
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(
            f"localcloud is up at {cloud.url} (S3, SNS, SQS, IAM, STS, CloudWatch, Application Auto Scaling, SageMaker)"
        )
        print("# point a shell at it:")
        print(export_lines(cloud.environment()), flush=True)
        print(
            f"# faults: {cloud.url}/_localcloud/faults  stats: {cloud.url}/_localcloud/stats",
            flush=True,
        )
        print("# Ctrl-C stops it (endpoint instance processes stop with it)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        cloud.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("localcloud stopped", flush=True)
    return 0
