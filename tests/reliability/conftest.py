"""The reliability suite's hooks: fault switchboard off around every test, ledgers printed at the end.

The echo endpoint, the probe, corpora and running a flow are shared with the flow tests
(``tests/runs.py`` and the fixtures in ``tests/conftest.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability.ledger import LEDGERS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Every ledger the session recorded, after the test results."""
    if not LEDGERS:
        return
    terminalreporter.section("reliability ledgers")
    for ledger in LEDGERS:
        terminalreporter.write_line(ledger.line())


@pytest.fixture(autouse=True)
def _faults_off(faults: Any) -> None:
    """Every reliability test starts and ends with the fault switchboard off."""
