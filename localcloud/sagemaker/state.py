"""Control-plane state: the model, endpoint-config and endpoint tables under one lock, and lookups.

``SageMakerBackend`` (models.py) adds the model and config operations to ``EndpointOperations``
(endpoints.py), which adds the endpoint state machine to this state: one backend, as moto keeps
one per service, in three files of one concern each.
"""

from __future__ import annotations

import threading

from localcloud.accounts import ACCOUNT_ID
from localcloud.sagemaker.exceptions import ValidationException
from localcloud.sagemaker.hosting.runtime import Context
from localcloud.sagemaker.records import (
    ConfigRecord,
    EndpointRecord,
    ModelRecord,
)


class ControlPlaneState:
    """The record tables the control-plane calls read and change together under one lock."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.region = ctx.region
        self._lock = threading.RLock()
        self.models: dict[str, ModelRecord] = {}
        self.configs: dict[str, ConfigRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.closed = False

    def arn(self, kind: str, name: str) -> str:
        """``arn:aws:sagemaker:<region>:<account>:<kind>/<name lower-cased>``, as AWS writes them."""
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT_ID}:{kind}/{name.lower()}"

    def get_model(self, name: str) -> ModelRecord:
        """The model or AWS's 'Could not find model' error."""
        with self._lock:
            if name not in self.models:
                raise ValidationException(f'Could not find model "{self.arn("model", name)}".')
            return self.models[name]

    def get_config(self, name: str) -> ConfigRecord:
        """The endpoint config or AWS's 'Could not find endpoint configuration' error."""
        with self._lock:
            if name not in self.configs:
                raise ValidationException(
                    f'Could not find endpoint configuration "{self.arn("endpoint-config", name)}".'
                )
            return self.configs[name]

    def get_endpoint(self, name: str) -> EndpointRecord:
        """The endpoint or AWS's 'Could not find endpoint' error."""
        with self._lock:
            if name not in self.endpoints:
                raise ValidationException(
                    f'Could not find endpoint "{self.arn("endpoint", name)}".'
                )
            return self.endpoints[name]
