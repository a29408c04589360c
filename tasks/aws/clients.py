"""The one place that builds boto3 clients, from a profile.

Credentials come from the profile's prefect-aws ``AwsCredentials`` block when it names one,
else from boto3's default chain. localcloud is reached only through ``endpoint_url``.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import boto3
from botocore.config import Config

from tasks.settings import Profile, load_profile

# Attempts of one AWS call (botocore standard mode: throttling, 5xx and connection errors, with
# jittered exponential backoff). This is the only per-call retry layer in docflow; 8 keeps a call
# going through a 20 % throttling rate with a chance of about 3 in a million of giving up.
AWS_CALL_ATTEMPTS = 8

_lock = threading.Lock()
_sessions: dict[tuple[Any, ...], boto3.session.Session] = {}
_clients: dict[tuple[Any, ...], Any] = {}


def client_config(profile: Profile, *, read_timeout_s: float | None = None) -> Config:
    """Standard retries and explicit timeouts for every client docflow makes."""
    return Config(
        region_name=profile.region,
        retries={"mode": "standard", "total_max_attempts": AWS_CALL_ATTEMPTS},
        connect_timeout=profile.connect_timeout_s,
        read_timeout=read_timeout_s or profile.read_timeout_s,
        max_pool_connections=64,
    )


def _session(profile: Profile) -> boto3.session.Session:
    key = (profile.credentials_block, profile.region, profile.local_credentials)
    with _lock:
        if key not in _sessions:
            if profile.credentials_block:
                from prefect_aws import AwsCredentials

                creds = cast(AwsCredentials, AwsCredentials.load(profile.credentials_block))
                _sessions[key] = creds.get_boto3_session()
            else:
                _sessions[key] = _default_session(profile)
        return _sessions[key]


def _default_session(profile: Profile) -> boto3.session.Session:
    """boto3's default chain; the profile's ``local_credentials`` when that finds none."""
    session = boto3.session.Session(region_name=profile.region)
    if profile.local_credentials is None or session.get_credentials() is not None:
        return session
    key_id, secret = profile.local_credentials
    return boto3.session.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=profile.region
    )


def aws_client(
    service: str, profile: Profile | None = None, *, read_timeout_s: float | None = None
) -> Any:
    """A cached, thread-safe boto3 client for ``service`` configured from ``profile``."""
    profile = profile or load_profile()
    key = (service, profile, read_timeout_s)
    with _lock:
        cached = _clients.get(key)
    if cached is not None:
        return cached
    session = _session(profile)
    # cast: the stubs type `client` per literal service name; ours is a runtime string.
    made = cast(Any, session).client(
        service,
        endpoint_url=profile.endpoint_url,
        config=client_config(profile, read_timeout_s=read_timeout_s),
    )
    with _lock:
        return _clients.setdefault(key, made)


def clear_client_cache() -> None:
    """Forget cached sessions and clients (tests that switch endpoints call this)."""
    with _lock:
        _sessions.clear()
        _clients.clear()
