"""process_documents on localcloud with the echo model: every document ends completed, failed or rejected."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws import aws_client
from tasks.manifest import load_manifest, split_s3_uri
from tasks.settings import Autoscaling, Profile, load_profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def clean_faults(localcloud: Any) -> Iterator[None]:
    """The switchboard is shared by the session: every test starts and ends with it off."""
    localcloud.faults.reset()
    yield
    localcloud.faults.reset()


@pytest.fixture
def deployed(profile: Profile, tmp_path: Path) -> Callable[..., str]:
    """Deploy the echo model with the deploy-endpoint flow; returns the profile file flows are given."""
    from flows.deploy_endpoint import deploy_endpoint

    def deploy(*, cap: int = 8, slots: int = 2, environment: dict[str, str] | None = None) -> str:
        prof = profile.model_copy(
            update={
                "autoscaling": Autoscaling(enabled=False),
                "max_outstanding_invocations": cap,
                "max_concurrent_invocations_per_instance": slots,
                "invoke_rate_per_second": 200.0,
            }
        )
        path = profile_file(prof, tmp_path)
        url = upload_echo_model(prof, prof.bucket, key="models/echo/v1/model.tar.gz", version=None)
        deploy_endpoint(profile=path, model_data_url=url, environment=environment, **FAST_WAIT)
        return path

    return deploy


def write_corpus(path: Path, n: int, *, poison: frozenset[int] = frozenset()) -> list[str]:
    """A JSONL corpus of ``n`` short documents; indexes in ``poison`` carry ``__POISON__``."""
    ids = [f"doc-{i:05d}" for i in range(n)]
    with path.open("w", encoding="utf-8") as fh:
        for i, doc_id in enumerate(ids):
            text = " ".join(f"w{i}x{j}" for j in range(5)) + (" __POISON__" if i in poison else "")
            fh.write(json.dumps({"id": doc_id, "text": text, "topic": f"t{i % 3}"}) + "\n")
    return ids


def read_table(result: dict[str, Any], profile_path: str) -> pd.DataFrame:
    """The run's results.parquet, read back from S3."""
    bucket, key = split_s3_uri(result["results_uri"])
    body = aws_client("s3", load_profile(profile_path)).get_object(Bucket=bucket, Key=key)
    return pd.read_parquet(io.BytesIO(body["Body"].read()))


def assert_ledger(result: dict[str, Any], table: pd.DataFrame, input_rows: int) -> None:
    """Documents in = completed + failed + rejected, and exactly one result row per document."""
    assert result["documents"] == input_rows
    assert result["completed"] + result["failed"] + result["rejected"] == input_rows
    assert len(table) == input_rows
    ids = table["doc_id"].dropna()
    assert ids.is_unique
    assert set(table["status"]) <= {"completed", "failed", "rejected"}


class InvokeCounter:
    """Counts InvokeEndpointAsync calls per InferenceId that the service accepted (boto event hook)."""

    def __init__(self, profile_path: str) -> None:
        self.client = aws_client("sagemaker-runtime", load_profile(profile_path))
        self.by_id: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> InvokeCounter:
        self.client.meta.events.register(
            "after-call.sagemaker-runtime.InvokeEndpointAsync", self._count
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister(
            "after-call.sagemaker-runtime.InvokeEndpointAsync", self._count
        )

    def _count(self, http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if http_response.status_code < 300:
            with self._lock:
                key = parsed["InferenceId"]
                self.by_id[key] = self.by_id.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_id.values())


def run(path: str, corpus: Path, **params: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    from flows.process_documents import process_documents

    params.setdefault("max_new_tokens", 16)
    result = process_documents(corpus=str(corpus), profile=path, **params)
    return result, read_table(result, path)


def test_happy_path(deployed: Callable[..., str], tmp_path: Path, localcloud: Any) -> None:
    path = deployed()
    ids = write_corpus(tmp_path / "c.jsonl", 40)
    with InvokeCounter(path) as counter:
        result, table = run(
            path, tmp_path / "c.jsonl", batch_size=8, output_dir=str(tmp_path / "out")
        )
    assert_ledger(result, table, 40)
    assert result["completed"] == 40
    assert result["batches"] == 5
    assert counter.total == 5 == result["invocations"]
    done = table.set_index("doc_id").loc[ids]
    assert (done["status"] == "completed").all()
    # The echo model upper-cases the prompt, which holds the document text.
    assert done.loc["doc-00007", "text"].count("W7X0") == 1
    assert (tmp_path / "out" / "results.parquet").exists()
    manifest = load_manifest(result["run_key"], load_profile(path))
    assert manifest is not None and manifest.is_done()
    # The run's queue and subscriptions are gone.
    queues = aws_client("sqs", load_profile(path)).list_queues(QueueNamePrefix="docflow-")
    assert not [u for u in queues.get("QueueUrls", []) if result["run_key"] in u]
