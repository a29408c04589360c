"""A run's cost comes from what the endpoint actually ran: the deployed instance type and the
instance-seconds autoscaling kept up, not the profile's instance count × wall time."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.endpoint.spec import VARIANT_NAME
from tasks.run.fanout import drive_task as drive
from tasks.run.results.status import format_show, read_status
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.runs import run_process, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

DEPLOYED = "ml.g5.4xlarge"  # not the profile's instance_type (ml.g5.2xlarge)
PRICE = 2.03  # the profile's price of DEPLOYED, per hour
METER_EVERY_S = 0.2


class ReadyWatch:
    """Ground truth from inside localcloud: seconds the variant had 2 instances serving."""

    def __init__(self, localcloud: Any, endpoint: str) -> None:
        self.backend = localcloud._sagemaker.backend
        self.endpoint = endpoint
        self.two_s = 0.0
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ready(self) -> int:
        ep = self.backend.endpoints.get(self.endpoint)
        pool = ep.runtime.pools.get(VARIANT_NAME) if ep else None
        return 0 if pool is None else int(pool.ready_count)

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.02):
            now, ready = time.monotonic(), self._ready()
            self.most = max(self.most, ready)
            if ready >= 2:
                self.two_s += now - last
            last = now

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_cost_is_the_instance_seconds_that_ran_at_the_deployed_types_price(
    profile: Profile, tmp_path: Path, localcloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load: 1 instance at the start; target tracking (backlog 1 per instance) adds a second."""
    from flows.deploy_endpoint import deploy_endpoint

    prof = profile.model_copy(
        update={
            "autoscaling": Autoscaling(
                min_capacity=1,
                max_capacity=2,
                target_backlog_per_instance=1.0,
                scale_out_cooldown_s=0,
            ),
            "max_outstanding_invocations": 8,
            "max_concurrent_invocations_per_instance": 1,
            "invoke_rate_per_second": 200.0,
            "instance_hourly_usd_by_type": ((DEPLOYED, PRICE),),
        }
    )
    path = profile_file(prof, tmp_path)
    url = upload_echo_model(aws_client("s3", prof), prof.bucket, version="1")
    deploy_endpoint(
        profile=path,
        model_data_url=url,
        instance_type=DEPLOYED,
        environment={"ECHO_SLEEP_S": "0.25"},
        **FAST_WAIT,
    )
    write_corpus(tmp_path / "docs.jsonl", 80)
    monkeypatch.setattr(
        drive, "POLLING", dataclasses.replace(drive.POLLING, meter_every_s=METER_EVERY_S)
    )
    localcloud.faults.set(autoscale_time_scale=0.005)  # scale-out after 0.9 s of high backlog
    started = time.monotonic()
    with ReadyWatch(localcloud, prof.endpoint_name) as watch:
        result = run_process(
            corpus=str(tmp_path / "docs.jsonl"), profile=path, batch_size=1, max_new_tokens=8
        )
    wall = time.monotonic() - started
    assert result["completed"] == 80
    assert watch.most == 2, "autoscaling never added the second instance; raise the load"

    usage = result["fanout"]["usage"]
    assert result["instance_type"] == DEPLOYED
    assert result["instance_seconds_by_type"] == {DEPLOYED: result["instance_seconds"]}
    assert (result["instances_min"], result["instances_max"]) == (1, 2)
    # The cost is the observed instance-seconds at the deployed type's price.
    assert result["estimated_cost_usd"] == pytest.approx(
        result["instance_seconds"] / 3600 * PRICE, abs=1e-6
    )
    # One instance all through the metered window, plus the second one's seconds as localcloud
    # had it serving (within the window: at most the flow's time outside it less).
    window, extra = usage["window_s"], result["instance_seconds"] - usage["window_s"]
    slack = 2 * METER_EVERY_S * 2
    assert watch.two_s - (wall - window) - slack <= extra <= watch.two_s + slack
    assert extra >= 1.0, f"the second instance ran {extra:.2f} s in the window"
    # ... which is not the profile's count × wall time at the profile's type's price.
    naive = prof.instance_count * result["wall_time_s"] / 3600 * prof.instance_hourly_usd
    assert result["estimated_cost_usd"] != pytest.approx(naive, rel=0.05)
    assert result["instance_samples"] >= window / METER_EVERY_S / 2
    # `docflow runs show` (and the run-status flow) print the same figure.
    status = read_status(prof, result["run_key"])
    assert status is not None and status.cost is not None
    assert status.cost["estimated_cost_usd"] == result["estimated_cost_usd"]
    assert (
        f"cost      ${result['estimated_cost_usd']:.4f}: {result['instance_seconds']:.1f} "
        f"instance-seconds on {DEPLOYED} (1-2 instances; last attempt)"
    ) in format_show(status)
