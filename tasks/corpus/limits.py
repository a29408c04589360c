"""Limits against archive and compression bombs: one flow parameter, ``archive_limits``."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

# Below this many uncompressed bytes the ratio is not checked: a small file of repeated lines
# compresses far past any ratio a bomb needs, and costs nothing.
RATIO_FLOOR = 1 << 20


class LimitExceeded(Exception):
    """A file or member passes a limit; the message is its rejection reason and names it."""


class ArchiveLimits(BaseModel):
    """What one file of the corpus may expand to, through archives and compression."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_member_bytes: int = Field(
        100_000_000, ge=1, description="uncompressed bytes of one member or compressed file"
    )
    max_total_bytes: int = Field(
        1_000_000_000, ge=1, description="uncompressed bytes of all members of one corpus file"
    )
    max_members: int = Field(10_000, ge=1, description="members of one corpus file, all depths")
    max_depth: int = Field(
        3, ge=0, description="archives and compressed files inside each other (0: none opened)"
    )
    max_ratio: int = Field(
        100, ge=1, description="uncompressed over compressed bytes (checked above 1 MiB)"
    )

    def reason(self, what: str, limit: str, found: str) -> str:
        """A rejection naming the limit and how to raise it."""
        value = getattr(self, limit)
        return (
            f"{what} {found}, over archive_limits.{limit}={value}; if the file is safe, raise "
            f"the flow parameter archive_limits.{limit}, or move it out of the folder given as "
            "`corpus`"
        )

    def check_size(self, what: str, size: int, stored: int, budget: Budget) -> None:
        """LimitExceeded when ``size`` uncompressed bytes (of ``stored`` compressed) pass a limit."""
        if size > self.max_member_bytes:
            raise LimitExceeded(
                self.reason(what, "max_member_bytes", f"is over {self.max_member_bytes} bytes")
            )
        if budget.bytes + size > self.max_total_bytes:
            raise LimitExceeded(
                self.reason(
                    what, "max_total_bytes", f"brings the uncompressed total past {budget.bytes}"
                )
            )
        if size > RATIO_FLOOR and size > self.max_ratio * max(stored, 1):
            raise LimitExceeded(
                self.reason(
                    what,
                    "max_ratio",
                    f"expands {stored} bytes to more than {size} (over {size // max(stored, 1)}:1)",
                )
            )


@dataclass
class Budget:
    """What one corpus file has expanded to so far (members and bytes, all depths)."""

    members: int = 0
    bytes: int = 0
