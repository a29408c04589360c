"""tasks.artifacts: every name becomes a key Prefect accepts; tasks.run.plan.layout names a run's."""

from __future__ import annotations

import re

from tasks.artifacts import artifact_key
from tasks.run.plan.layout import run_artifact_key

KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def test_artifact_keys_are_lowercase_letters_digits_and_single_dashes() -> None:
    assert artifact_key("model", "SmolLM2-135M_Instruct v2") == "model-smollm2-135m-instruct-v2"
    assert artifact_key("docflow", "--Nightly.Run--", "summary") == "docflow-nightly-run-summary"
    for key in (artifact_key("a", "/x//y/"), run_artifact_key("run_2026.11", "progress")):
        assert KEY.match(key), key
    assert run_artifact_key("abc123", "results") == "docflow-abc123-results"
