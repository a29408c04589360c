"""The local UI stack's run alerts: a Prefect automation that fires when a docflow flow run fails
or crashes, and the notification block it sends through.

The block is a ``CustomWebhookNotificationBlock`` (``docflow-run-alerts``); in `make ui` it posts
to ``AlertReceiver``, a small HTTP listener inside the `make ui` process that prints each alert on
its console and appends it to ``<PREFECT_HOME>/logs/alerts.log`` (the local stand-in for Slack or
e-mail, as localcloud is for AWS). Point the block at a real webhook in the UI (Blocks) to get
the alerts elsewhere; the automation keeps using it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from docflow.prefect_server import HOST, prefect_api

BLOCK_NAME = "docflow-run-alerts"
AUTOMATION_NAME = "docflow run failed or crashed"
DOCFLOW_TAG = "docflow"  # every deployment in prefect.yaml carries it; its runs inherit it
FIRES_ON = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
SUBJECT = "docflow: flow run {{ flow_run.name }} is {{ flow_run.state.name }}"
BODY = (
    "Flow run {{ flow_run.name }} of {{ flow.name }} entered {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


class AlertReceiver:
    """An HTTP listener for the notification block's POSTs: each one is printed and logged."""

    def __init__(self, log_path: Path, say: Callable[[str], None] = print) -> None:
        self.log_path = log_path
        self.say = say
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                receiver.receive(self.rfile.read(length))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="docflow-alerts", daemon=True
        )

    @property
    def url(self) -> str:
        """Where the notification block posts."""
        return f"http://{HOST}:{self._server.server_address[1]}/alerts"

    def start(self) -> AlertReceiver:
        """Listen on a free port until stopped."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()

    def receive(self, body: bytes) -> None:
        """One alert: print ``[alert] subject: body`` and append it to the log as a JSON line."""
        try:
            alert = json.loads(body)
        except ValueError:
            alert = {"subject": "alert", "body": body.decode("utf-8", "replace")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(alert) + "\n")
        self.say(f"[alert] {alert.get('subject')}: {alert.get('body')}")
        self.received.append(alert)  # last: whoever sees it here finds it logged


def ensure_run_alerts(api_url: str, webhook_url: str) -> list[str]:
    """Save the notification block (pointing at ``webhook_url``) and create the automation if it is
    missing; returns what was created or changed."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    changed: list[str] = []
    with prefect_api(api_url):
        try:
            block: CustomWebhookNotificationBlock | None = cast(
                CustomWebhookNotificationBlock, CustomWebhookNotificationBlock.load(BLOCK_NAME)
            )
        except ValueError:
            block = None
        current = block.url if block is not None else None
        if block is None or current != webhook_url:
            block = CustomWebhookNotificationBlock(
                name="docflow run alerts",
                url=webhook_url,
                method="POST",
                json_data={"subject": "{{subject}}", "body": "{{body}}"},
                allow_private_urls=True,  # the local receiver listens on 127.0.0.1
            )
            block.save(BLOCK_NAME, overwrite=True)
            changed.append(f"notification block {BLOCK_NAME!r} -> {webhook_url}")
        block_id = block._block_document_id
        try:
            existing: Automation | None = cast(Automation, Automation.read(name=AUTOMATION_NAME))
        except ValueError:
            existing = None
        if existing is not None and any(
            getattr(a, "block_document_id", None) == block_id for a in existing.actions
        ):
            return changed
        if existing is not None:  # its block was replaced: make it anew
            existing.delete()
        Automation(
            name=AUTOMATION_NAME,
            description="A docflow flow run (tag 'docflow') failed or crashed: send an alert "
            f"through the {BLOCK_NAME!r} block.",
            trigger=EventTrigger(
                expect=set(FIRES_ON),
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.id": f"prefect.tag.{DOCFLOW_TAG}"},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
        ).create()
        changed.append(f"automation {AUTOMATION_NAME!r}")
    return changed
