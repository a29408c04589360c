"""The serving stacks an AWS profile can choose, and the container image each resolves to.

Only ``huggingface`` exists today: the Hugging Face PyTorch inference image (MMS + the inference
toolkit) with transformers 5.5.3, where the container code runs the serving engine. The image
URI comes from the SageMaker SDK v3's bundled tables (``sagemaker-core``), offline, per region
and instance type (GPU or CPU image). ``vllm`` is planned (docs/guide/aws-stacks.md), not built.
"""

from __future__ import annotations

import functools
import json
from importlib import metadata
from typing import Any, Literal, NamedTuple

from botocore import loaders, regions

ServingStack = Literal["huggingface"]
DEFAULT_STACK: ServingStack = "huggingface"


class StackImage(NamedTuple):
    """What a stack's image is looked up by in the SDK's tables."""

    framework: str
    version: str  # transformers, for the Hugging Face images
    base_framework_version: str


# transformers 5.5.3: the engine runs there (transformers >= 5); 4.51.3 is the older image,
# where the container code takes the static path (DEFAULT_ENGINE in inference/loaded_model.py).
STACK_IMAGES: dict[str, StackImage] = {
    "huggingface": StackImage("huggingface", "5.5.3", "pytorch2.6.0"),
}
DEFAULT_TRANSFORMERS_VERSION = STACK_IMAGES["huggingface"].version
DEFAULT_PYTORCH_VERSION = STACK_IMAGES["huggingface"].base_framework_version.removeprefix("pytorch")


class ImageLookupError(ValueError):
    """No image for these inputs; the message says what to pass instead."""


@functools.cache
def _table(framework: str) -> dict[str, Any]:
    """The SDK v3's bundled image table for ``framework`` (``image_uri_config/<framework>.json``).

    Read from the installed ``sagemaker-core`` distribution without importing it: importing
    ``sagemaker.core.image_uris`` took 2.5-8 s here (it loads every resource shape), the file 1 ms.
    tests/tasks/endpoint/test_images.py checks the URIs equal ``image_uris.retrieve``'s.
    """
    wanted = f"sagemaker/core/image_uri_config/{framework}.json"
    for file in metadata.files("sagemaker-core") or []:
        if str(file) == wanted:
            return dict(json.loads(file.read_text(encoding="utf-8")))
    raise ImageLookupError(f"sagemaker-core has no image table {wanted}; reinstall docflow")


def _processor(instance_type: str) -> str:
    """``gpu`` for the ml.g*/ml.p* families, ``cpu`` for the others (the SDK's rule)."""
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml" or not parts[1]:
        raise ImageLookupError(
            f"instance type {instance_type!r} is not of the form ml.<family>.<size>"
        )
    family = parts[1]
    if family.startswith(("inf", "trn")):
        raise ImageLookupError(
            f"instance type {instance_type!r} needs a Neuron image, which docflow does not "
            "resolve; pass image_uri=..."
        )
    return "gpu" if family[0] in ("g", "p") else "cpu"


def _ecr_hostname(region: str) -> str:
    """ECR's hostname in the region (botocore's bundled endpoint data, as the SDK does)."""
    resolver = regions.EndpointResolver(loaders.create_loader().load_data("endpoints"))
    endpoint = resolver.construct_endpoint("ecr", region)
    return str(endpoint["hostname"]) if endpoint else f"ecr.{region}.amazonaws.com"


def resolve_image_uri(
    region: str,
    instance_type: str,
    *,
    stack: str = DEFAULT_STACK,
    transformers_version: str | None = None,
    pytorch_version: str | None = None,
) -> str:
    """The stack's inference image for the region and instance type, from the SDK's tables."""
    if stack not in STACK_IMAGES:
        raise ImageLookupError(
            f"serving stack {stack!r} is not available: use one of {sorted(STACK_IMAGES)} "
            "(the vllm stack is planned, see docs/guide/aws-stacks.md), or pass image_uri=..."
        )
    image = STACK_IMAGES[stack]
    version = transformers_version or image.version
    base = f"pytorch{pytorch_version}" if pytorch_version else image.base_framework_version
    what = f"{stack} inference image for region {region!r}, instance {instance_type!r}, "
    what += f"transformers {version}, {base}"
    inference = _table(image.framework)["inference"]
    version = inference.get("version_aliases", {}).get(version, version)
    config = inference["versions"].get(version)
    if config is None:
        known = ", ".join(inference["versions"])
        raise ImageLookupError(f"no {what}: known versions {known}; pass image_uri=...")
    base = config.get("version_aliases", {}).get(base, base)
    entry = config.get(base)
    registry = (entry or {}).get("registries", {}).get(region)
    if entry is None or registry is None:
        raise ImageLookupError(
            f"no {what} in the SDK's tables; pass image_uri=... or set image_uri in the profile"
        )
    processor = _processor(instance_type)
    container = entry.get("container_version", {}).get(processor)
    py_version = entry["py_versions"][0]
    tag = "-".join(
        x
        for x in (
            f"{base.removeprefix('pytorch')}-transformers{version}",
            processor,
            py_version,
            container,
        )
        if x
    )
    return f"{registry}.dkr.{_ecr_hostname(region)}/{entry['repository']}:{tag}"
