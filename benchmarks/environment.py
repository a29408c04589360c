"""The bench's world: localcloud, a Prefect server, a bucket, and async endpoints deployed on it."""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from typing import Any

from benchmarks.spec import EndpointInfo

BUCKET = "docflow-bench"


class BenchEnvironment:
    """Start everything the contenders share; ``child_env()`` points their processes at it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._stack = ExitStack()
        self.cloud: Any = None
        self.prefect_api_url: str | None = None
        self.profile: Any = None

    def __enter__(self) -> BenchEnvironment:
        from localcloud import LocalCloud

        try:
            self.cloud = LocalCloud(port=0).start()
            self._stack.callback(self.cloud.stop)
            self._saved = {k: os.environ.get(k) for k in self._overrides()}
            os.environ.update(self._overrides())
            self._stack.callback(self._restore_environ)
            self._start_prefect()
            from tasks.aws.clients import aws_client, clear_client_cache
            from tasks.aws.s3 import ensure_bucket
            from tasks.settings import load_profile

            clear_client_cache()
            self.profile = load_profile()
            ensure_bucket(aws_client("s3", self.profile), BUCKET)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _overrides(self) -> dict[str, str]:
        return {
            **self.cloud.environment(),
            "DOCFLOW_PROFILE": "local",
            "DOCFLOW_BUCKET": BUCKET,
            "DOCFLOW_MAX_OUTSTANDING_INVOCATIONS": str(self.cap),
        }

    def _restore_environ(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _start_prefect(self) -> None:
        """A throwaway Prefect server and database, shared by every docflow run of this bench."""
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        # The server's telemetry insert races its own start-up on SQLite ("database is locked").
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

        self._stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        self.prefect_api_url = PREFECT_API_URL.value()

    def child_env(self, endpoint: EndpointInfo | None = None) -> dict[str, str]:
        """Environment for a contender process: localcloud, the profile overrides, the Prefect API."""
        env = dict(self._overrides())
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        if endpoint is not None:
            env["DOCFLOW_ENDPOINT_NAME"] = endpoint.name
        return env

    def instance_cpu_s(self, endpoint: str) -> float:
        """CPU seconds (user + system) spent so far by the endpoint's live instance processes."""
        import psutil

        total = 0.0
        for pid in self.cloud.instance_pids(endpoint):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def new_endpoint_name(self, stem: str) -> str:
        """A fresh endpoint name, so sections never share an endpoint's queue or stats."""
        return f"bench-{stem}-{uuid.uuid4().hex[:6]}"
