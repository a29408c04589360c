"""Which serving stack a model's image names, and what localcloud emulates of it.

* A Hugging Face PyTorch inference image (``huggingface-pytorch-inference:<pt>-transformers<V>-...``):
  the inference toolkit on MMS. The container code runs with the image's transformers major
  version in mind: under 4.x the static path (``DOCFLOW_ENGINE=static``, as the code itself
  picks under real 4.x; the library versions themselves are checked by make test's container
  environments, tests/inference/test_container_parity.py). MMS does not stream responses, so
  ``InvokeEndpointWithResponseStream`` is refused.
* docflow's serving image (``docflow-serving:<tag>``, any registry; docker/serving/): the
  streaming stack docs/guide/aws-stacks.md names. The instance runs that image's real ``serve``
  entrypoint (``hosting/serve_instance``: the SageMaker container contract on uvicorn, streaming
  as a chunked ``POST /invocations``), in docflow's environment.
* An image localcloud knows it cannot emulate (vLLM, LMI, TGI, SGLang) is refused with its name.
* Anything else (``echo``, no image): a generic inference-toolkit container, localcloud's own
  stand-in (``hosting/instance``), which runs ``code/inference.py`` and streams through its
  ``invoke_stream``. It is for tests of localcloud itself; no AWS image behaves like it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HF_IMAGE = re.compile(
    r"huggingface-pytorch-inference:[\w.]+-transformers(?P<version>\d+(\.\d+)*)-"
)
# ECR repository names of stacks whose servers localcloud does not run.
NOT_EMULATED = {
    "vllm": "the AWS vLLM image (planned: docs/guide/aws-stacks.md)",
    "djl-inference": "LMI (DJL Serving)",
    "huggingface-pytorch-tgi-inference": "TGI",
    "sglang": "SGLang",
}
SERVING_REPOSITORY = "docflow-serving"  # docker/serving/Dockerfile's image
STREAM_REFUSED = "does not support response streaming"


class ImageNotEmulated(ValueError):
    """localcloud cannot run this image's server; the message names it."""


@dataclass(frozen=True)
class ImageProfile:
    """What an image runs: its server, transformers version (HF images) and whether it streams."""

    image: str
    server: str  # "mms" (Hugging Face toolkit), "docflow" (our serving image) or "toolkit"
    transformers: str | None
    streams: bool

    def environment(self) -> dict[str, str]:
        """Environment the instance gets from its image (the model's Environment overrides it)."""
        if self.transformers is not None and int(self.transformers.split(".")[0]) < 5:
            return {"DOCFLOW_ENGINE": "static"}
        return {}


def repository(image: str) -> str:
    """The repository part of an image URI (no registry, no tag)."""
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def image_profile(image: str | None) -> ImageProfile:
    """The profile of ``image``; ImageNotEmulated for a stack localcloud does not run."""
    image = image or "localcloud"
    repo = repository(image)
    if repo in NOT_EMULATED:
        raise ImageNotEmulated(
            f"localcloud cannot emulate image {image!r} ({NOT_EMULATED[repo]}): it runs the "
            "Hugging Face PyTorch inference images and docflow's serving image (docflow-serving); "
            "deploy with the huggingface serving stack or give another Image"
        )
    match = _HF_IMAGE.search(image)
    if match:
        return ImageProfile(image, "mms", match["version"], streams=False)
    if repo == SERVING_REPOSITORY:
        return ImageProfile(image, "docflow", None, streams=True)
    return ImageProfile(image, "toolkit", None, streams=True)


def stream_refusal(endpoint: str, image: str) -> str:
    """The ValidationError message for a response stream on an image whose server cannot stream."""
    return (
        f"Endpoint {endpoint}'s container {STREAM_REFUSED}: image {image} serves with the "
        "Hugging Face inference toolkit (MMS), which answers whole. Use InvokeEndpoint, or "
        "deploy the streaming stack (docs/guide/aws-stacks.md)."
    )
