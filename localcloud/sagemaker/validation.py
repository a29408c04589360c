"""Server-side checks botocore does not make on the client: names, enums, ranges, S3 URIs."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from localcloud.sagemaker.exceptions import ValidationException

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MODEL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$")


@lru_cache(maxsize=1)
def instance_types() -> tuple[str, ...]:
    """Every real-time/async hosting instance type, from botocore's SageMaker service model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape: Any = model.shape_for("ProductionVariantInstanceType")
    return tuple(shape.enum)


def check_name(value: object, field: str, pattern: re.Pattern[str] = NAME_PATTERN) -> str:
    """A resource name matching AWS's pattern (1-63 chars, alphanumerics and hyphens)."""
    if not isinstance(value, str) or not value or len(value) > 63 or not pattern.match(value):
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern.pattern.strip('^$')}"
        )
    return value


def check_instance_type(value: object, index: int) -> str:
    """An instance type SageMaker hosting knows (ml.g5.*, ml.g6.*, ml.m5.*, ...)."""
    known = instance_types()
    if value not in known:
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at 'productionVariants.{index}.member.instanceType' "
            f"failed to satisfy constraint: Member must satisfy enum value set: [{', '.join(known)}]"
        )
    return str(value)


def check_s3_uri(value: object, field: str) -> str:
    """An ``s3://bucket/...`` URI."""
    if not isinstance(value, str) or not re.match(
        r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value
    ):
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: ^(https|s3)://([^/]+)/?(.*)$"
        )
    return value


def check_range(value: object, field: str, low: int, high: int) -> int:
    """An integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must have value between {low} and {high}"
        )
    return value
