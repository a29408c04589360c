"""The WSGI front door: route each request to moto, the SageMaker emulator or the control API."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

CONTROL_PREFIX = "/_localcloud/"


def signing_service(environ: dict[str, Any]) -> str | None:
    """The service named in the SigV4 credential scope of the Authorization header, if any."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    marker = "Credential="
    start = auth.find(marker)
    if start < 0:
        return None
    scope = auth[start + len(marker) :].split(",", 1)[0].strip()
    parts = scope.split("/")
    if len(parts) != 5:
        return None
    return parts[3].lower()


class Dispatcher:
    """Send ``sagemaker`` (control plane and runtime) to the emulator, the rest to moto."""

    def __init__(self, moto: WSGIApp, sagemaker: WSGIApp, control: WSGIApp) -> None:
        self.moto = moto
        self.sagemaker = sagemaker
        self.control = control

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Route one request."""
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return self.control(environ, start_response)
        if signing_service(environ) == "sagemaker":
            return self.sagemaker(environ, start_response)
        return self.moto(environ, start_response)
