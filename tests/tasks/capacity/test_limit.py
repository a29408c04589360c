"""tasks.capacity.limit (the endpoint's shared cap) and staging payloads that already exist."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tasks.capacity.limit import (
    CapacityError,
    CapShare,
    Demand,
    fair_share,
    read_invocation_limit,
    require_invocation_limit,
)
from tasks.run.fanout.staging import StagedInput, stage_inputs
from tasks.settings import Profile


def test_staging_skips_objects_that_exist(profile: Profile) -> None:
    inputs = [
        StagedInput(key=f"runs/r1/inputs/b{i}.jsonl", body=b'{"id":"%d"}\n' % i) for i in range(3)
    ]
    assert stage_inputs(profile, inputs) == 3
    changed = [StagedInput(key=inputs[0].key, body=b"changed\n"), *inputs[1:]]
    assert stage_inputs(profile, changed) == 0
    s3 = aws_client("s3", profile)
    body = s3.get_object(Bucket=profile.bucket, Key=inputs[0].key)["Body"].read()
    assert body == b'{"id":"0"}\n'


def _limit(endpoint: str, limit: int) -> None:
    from tasks.endpoint.deploy import ensure_invocation_limit

    ensure_invocation_limit(endpoint, limit)


def test_cap_shares_split_the_endpoint_cap_between_runs(prefect_harness: Any) -> None:
    endpoint = f"cap-{uuid.uuid4().hex[:8]}"
    _limit(endpoint, 3)
    assert require_invocation_limit(endpoint) == 3
    run_a, run_b = CapShare(endpoint), CapShare(endpoint)
    try:
        assert run_a.grow(2, timeout_s=0) == 2
        assert run_a.held == 2
        # Only one slot is left for the second run: it takes what is free, not what it asked for.
        assert run_b.grow(2, timeout_s=0.5) == 1
        assert run_a.grow(1, timeout_s=0.5) == 0
        assert run_a.shrink_to(1) == 1  # slots go back one by one: 2 becomes 1
        assert run_b.grow(2, timeout_s=2) == 1
        assert run_a.shrink_to(0) == 1
        assert run_b.grow(1, timeout_s=2) == 1
        assert run_b.held == 3
    finally:
        run_a.close()
        run_b.close()
    assert run_a.held == run_b.held == 0


def test_a_missing_limit_is_a_clear_error(prefect_harness: Any) -> None:
    endpoint = f"nolimit-{uuid.uuid4().hex[:8]}"
    assert read_invocation_limit(endpoint) is None
    with pytest.raises(CapacityError, match="deploy-endpoint"):
        require_invocation_limit(endpoint)
    with pytest.raises(CapacityError, match=f"sagemaker:{endpoint}"):
        CapShare(endpoint).grow(1, timeout_s=1)


def test_fair_share_gives_a_small_run_a_slot_beside_a_big_one() -> None:
    assert fair_share(8, 8, 8) == 8  # alone: everything it can use
    assert fair_share(8, 3, 5) == 3  # the cap covers everyone's want
    assert fair_share(8, 8, 9) == 7  # a one-batch run arrived: the big run makes room
    assert fair_share(8, 1, 9) == 1
    assert fair_share(8, 8, 16) == 4  # two big runs split the cap
    assert fair_share(8, 1, 64) == 1  # never starved
    assert fair_share(8, 0, 9) == 0


def test_demand_adds_up_what_every_run_wants(prefect_harness: Any) -> None:
    endpoint = f"demand-{uuid.uuid4().hex[:8]}"
    big, small = Demand(endpoint), Demand(endpoint)
    try:
        big.set(8)
        assert big.total() == 8
        small.set(1)
        assert big.total() == small.total() == 9
        big.set(3)  # the big run's tail
        assert small.total() == 4
    finally:
        big.close()
        small.close()
    assert Demand(endpoint).total() == 0
