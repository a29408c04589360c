"""One exception class per AWS error code, carrying AWS's code, HTTP status and message."""

from __future__ import annotations


class SageMakerError(Exception):
    """Base: an AWS error answer (``__type`` = ``code``)."""

    code = "InternalFailure"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(SageMakerError):
    """Control plane: bad input, unknown resource, duplicate name, wrong state."""

    code = "ValidationException"
    status = 400


class ResourceLimitExceeded(SageMakerError):
    """Control plane: an account quota would be exceeded."""

    code = "ResourceLimitExceeded"
    status = 400


class ValidationError(SageMakerError):
    """Runtime: bad input or unknown endpoint."""

    code = "ValidationError"
    status = 400


class ServiceUnavailable(SageMakerError):
    """Runtime: throttled or no capacity; retry with backoff."""

    code = "ServiceUnavailable"
    status = 503


class InternalFailure(SageMakerError):
    """Runtime: something broke on the service side."""

    code = "InternalFailure"
    status = 500


class ModelError(SageMakerError):
    """Runtime (real-time only): the model container answered 4xx/5xx."""

    code = "ModelError"
    status = 424

    def __init__(
        self, message: str, original_status: int = 500, original_message: str = ""
    ) -> None:
        super().__init__(message)
        self.original_status = original_status
        self.original_message = original_message
