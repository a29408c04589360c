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
FINAL_SAVE_S = 60.0  # the save on stop; `docflow ui` waits STOP_TIMEOUT_S (120 s) in all


class StateKeeper:
    """Loads S3 from ``folder`` once, and saves what changed there every SNAPSHOT_EVERY_S on a
    background thread (the main thread stays free to stop) and once more on stop; a save that
    fails is said and the last one kept."""

    def __init__(self, url: str, folder: Path) -> None:
        self.snapshot = S3Snapshot(url, folder)
        self._last = time.monotonic()
        self._saving: threading.Thread | None = None

    def load(self) -> int:
        """Objects loaded from the folder."""
        return self.snapshot.load()

    def save(self) -> str:
        """Save now, in this thread; what happened, in words."""
        try:
            kept, written = self.snapshot.save()
        except Exception as exc:  # a save must never take localcloud down: the last one stays
            return f"S3 not saved ({type(exc).__name__}: {exc}); the last save is kept"
        return f"{kept} S3 objects saved to {self.snapshot.root.parent} ({written} written now)"

    def maybe_save(self) -> None:
        """Start a save in the background when SNAPSHOT_EVERY_S has passed and none is running."""
        if self._saving is not None and self._saving.is_alive():
            return
        if time.monotonic() - self._last < SNAPSHOT_EVERY_S:
            return
        self._last = time.monotonic()

        def save_and_say_a_failure() -> None:
            said = self.save()
            if said.startswith("S3 not saved"):
                print(f"localcloud: {said}", flush=True)

        self._saving = threading.Thread(
            target=save_and_say_a_failure, name="localcloud-s3-save", daemon=True
        )
        self._saving.start()

    def final_save(self, timeout_s: float = FINAL_SAVE_S) -> str:
        """The save on stop, after any save under way: at most ``timeout_s`` in all."""
        deadline = time.monotonic() + timeout_s
        if self._saving is not None:
            self._saving.join(timeout=timeout_s)
            if self._saving.is_alive():
                return f"S3 not saved (a save still runs after {timeout_s:.0f} s); the last save is kept"
        said: list[str] = []
        last = threading.Thread(target=lambda: said.append(self.save()), daemon=True)
        last.start()
        last.join(timeout=max(0.0, deadline - time.monotonic()))
        return (
            said[0]
            if said
            else f"S3 not saved (not done in {timeout_s:.0f} s); the last save is kept"
        )


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
            print(f"localcloud: {keeper.final_save()}", flush=True)
        cloud.stop()
        faulthandler.cancel_dump_traceback_later()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("localcloud stopped", flush=True)
    return 0
