"""``docflow local up``: run localcloud in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import faulthandler
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from localcloud.cloud import LocalCloud
from localcloud.persist import SNAPSHOT_EVERY_S, S3Snapshot

STOP_REPORT_S = 30.0  # a stop still running after this logs every thread's stack


class StateKeeper:
    """Loads S3 from ``folder`` once, and saves what changed there on stop and every
    SNAPSHOT_EVERY_S; a save that fails is said and the last one kept."""

    def __init__(self, url: str, folder: Path) -> None:
        self.snapshot = S3Snapshot(url, folder)
        self._last = time.monotonic()

    def load(self) -> int:
        """Objects loaded from the folder."""
        return self.snapshot.load()

    def save(self) -> str:
        """Save now; what happened, in words."""
        self._last = time.monotonic()
        try:
            kept, written = self.snapshot.save()
        except Exception as exc:  # a save must never take localcloud down: the last one stays
            return f"S3 not saved ({type(exc).__name__}: {exc}); the last save is kept"
        return f"{kept} S3 objects saved to {self.snapshot.root.parent} ({written} written now)"

    def maybe_save(self) -> None:
        """Save when SNAPSHOT_EVERY_S has passed since the last save; say only a failure."""
        if time.monotonic() - self._last >= SNAPSHOT_EVERY_S:
            said = self.save()
            if said.startswith("S3 not saved"):
                print(f"localcloud: {said}", flush=True)


def export_lines(env: dict[str, str]) -> str:
    """``export KEY=value`` lines a shell can eval."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def serve_forever(host: str = "127.0.0.1", port: int = 4566, state_dir: str | None = None) -> int:
    """Start localcloud, print the environment a shell needs, block until interrupted; returns an exit code.

    ``state_dir``: keep S3 there across restarts (``localcloud.persist``).
    """
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
    keeper = StateKeeper(cloud.url, Path(state_dir)) if state_dir else None
    if keeper is not None:
        print(f"localcloud: S3 kept in {state_dir} ({keeper.load()} objects loaded)", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # A stop that hangs says where: every thread's stack in the log after STOP_REPORT_S.
        faulthandler.dump_traceback_later(STOP_REPORT_S, exit=False)

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
            if keeper is not None:
                keeper.maybe_save()
    finally:
        if keeper is not None:
            print(f"localcloud: {keeper.save()}", flush=True)
        cloud.stop()
        faulthandler.cancel_dump_traceback_later()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("localcloud stopped", flush=True)
    return 0
