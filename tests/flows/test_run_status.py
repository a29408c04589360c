"""The run-status flow (the UI's read-out) shows what `docflow runs show KEY` prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.run_status import run_status
from tasks.run.results.status import format_show, read_status
from tests.runs import Deployment, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")


def test_run_status_flow_reads_out_a_run_as_runs_show_does(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact

    dep = deploy_echo()
    write_corpus(tmp_path / "c.jsonl", 5, poison={1})
    run_flow(dep, tmp_path / "c.jsonl", batch_size=5, run_key="statusflow1")
    shown: Any = run_status(run_key="statusflow1", profile=dep.profile_path)
    expected = read_status(dep.profile, "statusflow1")
    assert expected is not None and shown == expected.model_dump(mode="json")
    assert shown["request_counts"]["total"] == 5 and shown["request_counts"]["errored"] >= 1
    artifact: Any = Artifact.get("docflow-statusflow1-status")
    assert artifact is not None and format_show(expected) in str(artifact.data)

    listed: Any = run_status(profile=dep.profile_path)
    assert [r["run_key"] for r in listed] == ["statusflow1"]
    with pytest.raises(ValueError, match="no run 'nosuchrun'"):
        run_status(run_key="nosuchrun", profile=dep.profile_path)
