"""The reliability ledger: documents in = completed + failed + rejected + canceled, duplicates seen, invocations made."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.settings import Profile

if TYPE_CHECKING:
    from tests.runs import RunOutcome

LEDGERS: list[Ledger] = []


@dataclass
class Ledger:
    """What one reliability scenario put in and what came out, from the results table and localcloud."""

    scenario: str
    load: str
    documents_in: int
    result_rows: int
    completed: int
    failed: int
    rejected: int
    missing: int
    extra_rows: int
    duplicate_notifications: int
    invocations: int
    accepted_by_endpoint: int
    wall_s: float
    notes: dict[str, Any] = field(default_factory=dict)
    canceled: int = 0

    @property
    def balanced(self) -> bool:
        """Every input row has exactly one result row, and the four outcomes add up."""
        return (
            self.missing == 0
            and self.extra_rows == 0
            and self.result_rows == self.documents_in
            and self.completed + self.failed + self.rejected + self.canceled == self.documents_in
        )

    def line(self) -> str:
        """One human-readable line for the test log and the terminal summary."""
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"[ledger] {self.scenario} ({self.load}): in={self.documents_in} = "
            f"completed {self.completed} + failed {self.failed} + rejected {self.rejected} + "
            f"canceled {self.canceled}; "
            f"rows={self.result_rows} missing={self.missing} extra={self.extra_rows} "
            f"duplicates_seen={self.duplicate_notifications} invocations={self.invocations} "
            f"accepted_by_endpoint={self.accepted_by_endpoint} wall={self.wall_s:.1f}s"
            + (f" {notes}" if notes else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return asdict(self) | {"balanced": self.balanced}


def read_results(result: dict[str, Any], profile: Profile) -> pd.DataFrame:
    """The run's results table, read back from S3 where the flow wrote it."""
    bucket, key = split_s3_uri(str(result["results_uri"]))
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    if key.endswith(".csv"):
        return pd.read_csv(io.BytesIO(body))
    if key.endswith(".jsonl"):
        return pd.read_json(io.BytesIO(body), lines=True)
    return pd.read_parquet(io.BytesIO(body))


def compute_ledger(
    scenario: str,
    load: str,
    *,
    input_ids: list[str],
    input_rows: int,
    result: dict[str, Any],
    table: pd.DataFrame,
    endpoint_stats: dict[str, int],
    wall_s: float,
    **notes: Any,
) -> Ledger:
    """Balance a run's books: ``input_ids`` are the valid ids, ``input_rows`` every row of the input."""
    statuses = Counter(table["status"].dropna())
    # One row per input row (a rejected second use of an id is a row of its own), and at most
    # one completed-or-failed row per valid id.
    rows = Counter(int(r) for r in table["row"].dropna())
    outcomes = Counter(str(i) for i in table.loc[table["status"] != "rejected", "doc_id"].dropna())
    missing = sum(1 for doc_id in set(input_ids) if outcomes[doc_id] == 0)
    extra = sum(n - 1 for n in rows.values() if n > 1)
    extra += sum(n - 1 for n in outcomes.values() if n > 1)
    return Ledger(
        scenario=scenario,
        load=load,
        documents_in=input_rows,
        result_rows=len(table),
        completed=statuses.get("completed", 0),
        failed=statuses.get("failed", 0),
        rejected=statuses.get("rejected", 0),
        missing=missing,
        extra_rows=extra,
        duplicate_notifications=int(result.get("duplicate_notifications", 0)),
        invocations=int(result.get("invocations", 0)),
        accepted_by_endpoint=int(endpoint_stats.get("received", 0)),
        wall_s=wall_s,
        notes=dict(notes),
        canceled=statuses.get("canceled", 0),
    )


def record(ledger: Ledger) -> Ledger:
    """Print the ledger (the test's log) and keep it for the session's terminal summary."""
    print(ledger.line())
    print("[ledger-json] " + json.dumps(ledger.as_dict(), default=str))
    LEDGERS.append(ledger)
    return ledger


def ledger_of(
    scenario: str,
    load: str,
    outcome: RunOutcome,
    ids: list[str],
    *,
    localcloud: Any,
    endpoint: str,
    input_rows: int | None = None,
    **notes: Any,
) -> Ledger:
    """Compute, print and keep the ledger of a run."""
    stats = localcloud.stats.snapshot().get(endpoint, {})
    return record(
        compute_ledger(
            scenario,
            load,
            input_ids=ids,
            input_rows=len(ids) if input_rows is None else input_rows,
            result=outcome.result,
            table=outcome.table,
            endpoint_stats=stats,
            wall_s=outcome.wall_s,
            **notes,
        )
    )
