"""``LocalCloud``: moto and the SageMaker hosting emulator behind one threaded HTTP server."""

from __future__ import annotations

import logging
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from localcloud.accounts import ACCESS_KEY, SECRET_KEY
from localcloud.control import ControlApp
from localcloud.dispatch import Dispatcher
from localcloud.faults import Faults
from localcloud.iam.guard import IamGuard
from localcloud.stats import Stats


def _quiet_handler() -> type:
    """moto's request handler (keeps underscored S3 metadata headers) without access logging."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            """Silence the per-request access log."""

    return QuietHandler


def localcloud_environment(url: str, region: str) -> dict[str, str]:
    """What unmodified boto3 clients and docflow need to reach the localcloud at ``url``."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": region,
        # Last: `localcloud` prints these as export lines, and readers stop at this one.
        "DOCFLOW_ENDPOINT_URL": url,
    }


class LocalCloud:
    """The embedded AWS: start it, point boto3 at ``.url`` (see ``.environment()``), stop it."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        region: str = "us-east-1",
        seed: int = 0,
        enforce_iam: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.faults = Faults(seed=seed)
        self.stats = Stats()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._sagemaker: Any = None
        # IAM enforcement (off by default): ``.iam.enabled = True`` or ``with .iam.enforced():``.
        self.iam = IamGuard(_unavailable, root_access_key=ACCESS_KEY, enabled=enforce_iam)

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self._server is None:
            raise RuntimeError(
                "LocalCloud is not started; call .start() or use it as a context manager"
            )
        return f"http://{self.host}:{self._server.server_port}"

    def environment(self) -> dict[str, str]:
        """The environment variables that point unmodified boto3 clients (and docflow) here."""
        return localcloud_environment(self.url, self.region)

    def start(self) -> LocalCloud:
        """Bind the port and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        from localcloud.sagemaker.service import SageMakerService

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto_app = DomainDispatcherApplication(create_backend_app)
        dispatcher = Dispatcher(
            moto=moto_app,
            sagemaker=_unavailable,
            control=ControlApp(self.faults, self.stats, self.instances),
        )
        self.iam.app = dispatcher
        try:
            server = make_server(
                self.host, self.port, self.iam, threaded=True, request_handler=_quiet_handler()
            )
        except SystemExit as exc:  # werkzeug exits (instead of raising) when the port is taken
            raise OSError(f"cannot listen on {self.host}:{self.port}: address in use") from exc
        self._server = server
        self._sagemaker = SageMakerService(
            url=self.url,
            region=self.region,
            faults=self.faults,
            stats=self.stats,
            credentials=(ACCESS_KEY, SECRET_KEY),
        )
        dispatcher.sagemaker = self._sagemaker.wsgi
        self._thread = threading.Thread(
            target=server.serve_forever, name="localcloud-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop every endpoint instance process, then the HTTP server."""
        if self._sagemaker is not None:
            self._sagemaker.shutdown()
            self._sagemaker = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def instance_pids(self, endpoint_name: str | None = None) -> list[int]:
        """PIDs of the live instance processes (of one endpoint, or all)."""
        if self._sagemaker is None:
            return []
        pids: list[int] = self._sagemaker.instance_pids(endpoint_name)
        return pids

    def instances(self) -> dict[str, list[int]]:
        """Live instance PIDs per endpoint."""
        if self._sagemaker is None:
            return {}
        found: dict[str, list[int]] = self._sagemaker.instances()
        return found

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _unavailable(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "application/json")])
    return [b'{"__type": "ServiceUnavailable", "message": "localcloud is starting"}']
