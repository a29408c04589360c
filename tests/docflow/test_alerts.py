"""The local UI stack's alert: an automation on failed/crashed docflow runs and its notification block."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docflow.alerts import (
    AUTOMATION_NAME,
    BLOCK_NAME,
    DOCFLOW_TAG,
    FIRES_ON,
    AlertReceiver,
    ensure_run_alerts,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[AlertReceiver]:
    lines: list[str] = []
    listening = AlertReceiver(tmp_path / "alerts.log", say=lines.append).start()
    yield listening
    listening.stop()


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the test harness sets PREFECT_API_URL"
    return str(url)


def test_setup_creates_the_block_and_the_automation_once(receiver: AlertReceiver) -> None:
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    created = ensure_run_alerts(_api_url(), receiver.url)
    assert created == [
        f"notification block {BLOCK_NAME!r} -> {receiver.url}",
        f"automation {AUTOMATION_NAME!r}",
    ]
    block: Any = CustomWebhookNotificationBlock.load(BLOCK_NAME)
    assert block.url == receiver.url
    automation: Any = Automation.read(name=AUTOMATION_NAME)
    assert automation.enabled
    trigger = automation.trigger
    assert set(trigger.expect) == set(FIRES_ON)  # type: ignore[union-attr]
    related = trigger.match_related  # type: ignore[union-attr]
    assert related.model_dump() == {"prefect.resource.id": f"prefect.tag.{DOCFLOW_TAG}"}
    (action,) = automation.actions
    assert action.block_document_id == block._block_document_id  # type: ignore[union-attr]
    # A second `make ui` changes nothing.
    assert ensure_run_alerts(_api_url(), receiver.url) == []


def test_a_failed_docflow_run_reaches_the_receiver(receiver: AlertReceiver) -> None:
    from prefect import flow, tags

    ensure_run_alerts(_api_url(), receiver.url)

    @flow(name="alert-probe")
    def broken() -> None:
        raise RuntimeError("the corpus is gone")

    with tags(DOCFLOW_TAG), pytest.raises(RuntimeError):
        broken()
    deadline = time.monotonic() + 90
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.5)
    assert receiver.received, "no alert within 90 s"
    (alert,) = receiver.received
    assert "is Failed" in alert["subject"] and "the corpus is gone" in alert["body"]
    assert (receiver.log_path).read_text().count("\n") == 1
