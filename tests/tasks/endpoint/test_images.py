"""Serving stack images: read from the SDK v3's bundled tables, equal to the SDK's own lookup."""

from __future__ import annotations

import pytest

from tasks.endpoint.images import ImageLookupError, resolve_image_uri


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"])
@pytest.mark.parametrize("instance", ["ml.g5.2xlarge", "ml.p4d.24xlarge", "ml.m5.xlarge"])
@pytest.mark.parametrize("version", ["5.5.3", "4.51.3"])
def test_uris_equal_the_sdk_v3_retrieve(region: str, instance: str, version: str) -> None:
    from sagemaker.core import image_uris

    expected = image_uris.retrieve(
        "huggingface",
        region=region,
        version=version,
        base_framework_version="pytorch2.6.0",
        instance_type=instance,
        image_scope="inference",
    )
    assert resolve_image_uri(region, instance, transformers_version=version) == expected


def test_the_default_is_transformers_5_5_3() -> None:
    assert resolve_image_uri("us-east-1", "ml.g6.xlarge").endswith(
        "/huggingface-pytorch-inference:2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04"
    )
    assert resolve_image_uri("us-east-1", "ml.c7i.large").endswith(
        ":2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"region": "xx-nowhere-1"}, "image_uri"),
        ({"transformers_version": "9.9.9"}, "known versions"),
        ({"instance_type": "ml.inf2.xlarge"}, "Neuron"),
        ({"instance_type": "g5.2xlarge"}, "ml.<family>.<size>"),
        ({"stack": "vllm"}, "planned"),
    ],
)
def test_what_it_cannot_resolve_names_the_fix(kwargs: dict[str, str], message: str) -> None:
    args = {"region": "us-east-1", "instance_type": "ml.g5.2xlarge", **kwargs}
    with pytest.raises(ImageLookupError, match=message):
        resolve_image_uri(**args)
