"""localcloud: the embedded AWS (moto + a SageMaker hosting emulator) at one HTTP address.

``from localcloud import LocalCloud`` is resolved lazily: importing the package (as every endpoint
instance process does, ``python -m localcloud.sagemaker.hosting.instance``) loads neither moto nor the
emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localcloud.cloud import LocalCloud

__all__ = ["LocalCloud"]


def __getattr__(name: str) -> Any:
    if name == "LocalCloud":
        from localcloud.cloud import LocalCloud

        return LocalCloud
    raise AttributeError(f"module 'localcloud' has no attribute {name!r}")
