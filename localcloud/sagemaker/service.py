"""Wires the SageMaker emulator together: clients to moto, backends, HTTP responses."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from localcloud.applicationautoscaling.autoscaler import Autoscaler
from localcloud.faults import Faults
from localcloud.sagemaker.hosting.invocations import RuntimeBackend
from localcloud.sagemaker.hosting.notifications import Notifier
from localcloud.sagemaker.hosting.runtime import Context
from localcloud.sagemaker.models import SageMakerBackend
from localcloud.sagemaker.responses import SageMakerResponses
from localcloud.stats import Stats


class SageMakerService:
    """The emulator as one object: a WSGI app plus lifecycle (shutdown, instance PIDs)."""

    def __init__(
        self, url: str, region: str, faults: Faults, stats: Stats, credentials: tuple[str, str]
    ) -> None:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
            region_name=region,
        )
        config = Config(retries={"mode": "standard"}, max_pool_connections=64)
        s3 = session.client("s3", endpoint_url=url, config=config)
        sns = session.client("sns", endpoint_url=url, config=config)
        aws_env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": credentials[0],
            "AWS_SECRET_ACCESS_KEY": credentials[1],
            "AWS_DEFAULT_REGION": region,
        }
        ctx = Context(
            region=region,
            s3=s3,
            notifier=Notifier(sns, faults),
            faults=faults,
            stats=stats,
            aws_env=aws_env,
        )
        self.backend = SageMakerBackend(ctx)
        self.responses = SageMakerResponses(self.backend, RuntimeBackend(self.backend))
        clients = {
            name: session.client(name, endpoint_url=url, config=config)
            for name in ("application-autoscaling", "cloudwatch")
        }
        self.autoscaler = Autoscaler(self.backend, stats, faults, clients)
        self.autoscaler.start()

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI entry point."""
        return self.responses(environ, start_response)

    def shutdown(self) -> None:
        """Stop the autoscaler and every instance process."""
        self.autoscaler.stop()
        self.backend.shutdown()

    def instance_pids(self, endpoint_name: str | None = None) -> list[int]:
        """PIDs of live instance processes."""
        return self.backend.instance_pids(endpoint_name)

    def instances(self) -> dict[str, list[int]]:
        """Live instance PIDs per endpoint."""
        with self.backend._lock:
            names = list(self.backend.endpoints)
        return {name: self.backend.instance_pids(name) for name in names}
