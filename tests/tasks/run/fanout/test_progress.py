"""Watching a run: a log line every 5 % or minute, an artifact that changes only with the percentage."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tasks.run.fanout.progress import ProgressLog, RunProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_five_percent_or_every_minute() -> None:
    clock = Clock()
    log = ProgressLog(1000, step_pct=5, every_s=60, clock=clock)
    lines = []
    for done in range(0, 1001, 10):  # 10 documents a second
        clock.now += 1
        if line := log.line(done - done // 100, done // 100, 16):
            lines.append(line)
    assert len(lines) == 20  # 5 %, 10 %, … 100 %: one line per step, not one per update
    assert lines[0].startswith("progress 5 %: 50/1000 documents done (50 completed, 0 failed)")
    assert "16 in flight" in lines[0] and "docs/s" in lines[0]
    assert lines[-1].startswith("progress 100 %: 1000/1000") and lines[-1].endswith("ETA 0 s")
    # A slow stretch still says something once a minute.
    clock.now += 61
    stalled = ProgressLog(1000, step_pct=5, every_s=60, clock=clock)
    assert stalled.line(1, 0, 8) is None
    clock.now += 61
    line = stalled.line(2, 0, 8)
    assert line is not None and "ETA" in line


def test_eta_counts_only_this_attempts_documents() -> None:
    clock = Clock()
    log = ProgressLog(100, done_before=50, step_pct=5, every_s=60, clock=clock)
    clock.now += 10
    line = log.line(60, 0, 4)  # 10 documents in 10 s: 1 doc/s, 40 left
    assert line is not None and "1.0 docs/s, ETA 40 s" in line


def test_the_progress_artifact_changes_only_with_the_percentage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect.artifacts

    sent: list[float] = []

    def update(artifact_id: Any, progress: float, **_: Any) -> None:
        sent.append(progress)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", update)
    progress = RunProgress(1000, interval_s=0, terminal=False)
    # As __enter__ leaves it inside a flow run: the artifact created, showing 0 %.
    progress._artifact_id, progress._shown = uuid.uuid4(), 0
    for done in range(1001):
        progress.update(done)
    assert sent == [float(p) for p in range(1, 101)]
    assert progress.artifact_updates == 100
