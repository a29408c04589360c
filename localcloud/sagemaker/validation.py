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


MAX_INSTANCE_POOLS = 5


def check_instance_pools(variant: dict[str, Any], index: int) -> list[str]:
    """A variant's instance types in priority order: its ``InstancePools`` (1-5 pools, priorities
    1-5, each once) instead of ``InstanceType``, or its one ``InstanceType``."""
    pools = variant.get("InstancePools")
    if pools is None:
        return [check_instance_type(variant.get("InstanceType"), index)]
    if variant.get("InstanceType") is not None:
        raise ValidationException(
            f"productionVariants.{index}: specify either InstanceType or InstancePools, not both."
        )
    field = f"productionVariants.{index}.member.instancePools"
    if not isinstance(pools, list) or not 1 <= len(pools) <= MAX_INSTANCE_POOLS:
        raise ValidationException(
            f"1 validation error detected: Value at '{field}' failed to satisfy constraint: "
            f"Member must have length between 1 and {MAX_INSTANCE_POOLS}"
        )
    priorities = [check_range(p.get("Priority"), f"{field}.member.priority", 1, 5) for p in pools]
    if len(set(priorities)) != len(priorities):
        raise ValidationException(f"{field}: each instance pool needs its own Priority.")
    types = [check_instance_type(p.get("InstanceType"), index) for p in pools]
    if len(set(types)) != len(types):
        raise ValidationException(f"{field}: an instance type may appear in one pool only.")
    return [t for _, t in sorted(zip(priorities, types, strict=True))]


def variant_instance_types(variant: dict[str, Any]) -> list[str]:
    """The instance types of a stored (validated) variant, in priority order."""
    pools = variant.get("InstancePools")
    if not pools:
        return [str(variant["InstanceType"])]
    return [str(p["InstanceType"]) for p in sorted(pools, key=lambda p: int(p["Priority"]))]
