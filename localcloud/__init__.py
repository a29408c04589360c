"""localcloud: the embedded AWS (moto + a SageMaker hosting emulator) at one HTTP address."""

from __future__ import annotations

from localcloud.cloud import LocalCloud

__all__ = ["LocalCloud"]
