"""prefect-aws blocks made from a profile: AwsCredentials for the clients, S3Bucket for results."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

from tasks.settings import Profile

RESULTS_FOLDER = "prefect-results"


@dataclass(frozen=True)
class BlockNames:
    """The saved blocks' names; safe to print (they hold no secret)."""

    credentials: str
    results: str

    @property
    def results_slug(self) -> str:
        """`s3-bucket/<name>`: the value of PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK."""
        return f"s3-bucket/{self.results}"


def block_names(profile: Profile) -> BlockNames:
    """The profile's credentials block name (or docflow-<profile>) and its results block name."""
    credentials = profile.credentials_block or f"docflow-{profile.name}"
    return BlockNames(credentials=credentials, results=f"{credentials}-results")


def credentials_from_profile(
    profile: Profile, environ: Mapping[str, str] | None = None
) -> AwsCredentials:
    """An AwsCredentials block: the profile's region and endpoint, keys from AWS_* in environ.

    Without AWS_ACCESS_KEY_ID the block stores no keys, only AWS_PROFILE (if set): boto3's
    default chain finds them where the flow runs (an instance role, SSO, ~/.aws).
    """
    env = os.environ if environ is None else environ
    key_id = env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise ValueError(
            "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither "
            "(then the block uses AWS_PROFILE / the default credential chain)"
        )
    return AwsCredentials(
        aws_access_key_id=key_id or None,
        aws_secret_access_key=secret or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        profile_name=None if key_id else env.get("AWS_PROFILE") or None,
        region_name=profile.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=profile.endpoint_url),
    )


def save_blocks(profile: Profile, environ: Mapping[str, str] | None = None) -> BlockNames:
    """Save (overwrite) the credentials block and the S3Bucket results block for profile."""
    names = block_names(profile)
    credentials = credentials_from_profile(profile, environ)
    credentials.save(names.credentials, overwrite=True)
    S3Bucket(
        bucket_name=profile.bucket,
        credentials=credentials,
        bucket_folder=RESULTS_FOLDER,
    ).save(names.results, overwrite=True)
    return names


def describe_credentials(name: str) -> str:
    """A printable description of a saved credentials block; never includes a secret."""
    block = cast(AwsCredentials, AwsCredentials.load(name))
    has_keys = block.aws_access_key_id is not None
    source = "static keys (stored as a secret)" if has_keys else "the default credential chain"
    endpoint = block.aws_client_parameters.endpoint_url or "AWS"
    return f"AwsCredentials {name!r}: region {block.region_name}, endpoint {endpoint}, {source}"
