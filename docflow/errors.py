"""What the `docflow` command says when it cannot do its job: one line naming the fix.

Before a sub-command touches AWS, ``preflight`` checks what a newcomer gets wrong first: the
profile exists, localcloud answers (a local profile), and boto3 finds credentials (AWS). It
answers in well under a second, where botocore's retries of a refused connection would take
half a minute. ``one_line`` turns the expected failures that still get through into that line.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 2.0


class UserError(Exception):
    """An expected failure; its message is the one line the user sees (it names the fix)."""


def localcloud_down(url: str) -> str:
    """The line for a local profile whose localcloud does not answer."""
    return (
        f"localcloud is not running at {url}: start it with `docflow local up` (or `make ui`) "
        "in another shell, or point DOCFLOW_ENDPOINT_URL at the one you started"
    )


NO_CREDENTIALS = (
    "no AWS credentials found: run `aws configure` or `aws sso login`, export AWS_PROFILE, or "
    "name an AwsCredentials block in the profile's credentials_block"
)


def answers(url: str) -> bool:
    """True when something accepts TCP connections at ``url``'s host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def preflight(profile_name: str) -> Any:
    """The loaded profile, once its endpoint answers and credentials are found; else UserError."""
    from tasks.aws.clients import _session
    from tasks.settings import ProfileError, load_profile

    try:
        profile = load_profile(profile_name)
    except ProfileError as exc:
        raise UserError(str(exc).splitlines()[0]) from exc
    if profile.endpoint_url:
        if not answers(profile.endpoint_url):
            raise UserError(localcloud_down(profile.endpoint_url))
        return profile
    if profile.credentials_block is None and _session(profile).get_credentials() is None:
        raise UserError(NO_CREDENTIALS)
    return profile


def one_line(exc: BaseException) -> str | None:
    """The line for an expected failure, or None for a bug (which keeps its traceback)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    from tasks.settings import ProfileError

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, EndpointConnectionError):
        url = str(exc.kwargs.get("endpoint_url", ""))
        host = urlsplit(url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            return localcloud_down(url)
        return f"cannot reach {url}: check the network and the profile's region"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NO_CREDENTIALS
    if isinstance(exc, NoRegionError):
        return "no AWS region: set region in the profile or export AWS_DEFAULT_REGION"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        if error.get("Code") == "NoSuchBucket":
            return (
                f"bucket {error.get('BucketName') or ''!s} does not exist, so no run was made in "
                "this profile yet: `make ui` or `docflow demo` create it locally; on AWS set "
                "`bucket` in the profile"
            )
        return (
            f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')} "
            "(check the profile's bucket, endpoint and permissions)"
        )
    if isinstance(exc, ProfileError | ValueError | FileNotFoundError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None
