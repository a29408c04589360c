"""The local stack's configuration (`docflow ui`'s options) and its state file: which children run, as
which processes, at which addresses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from docflow.prefect_server import (
    DEFAULT_PREFECT_PORT,
    PROJECT_ROOT,
)

DEFAULT_LOCALCLOUD_PORT = 4566


MAX_WORKERS = 16


STATE_FILE = "docflow-ui.json"


@dataclass(frozen=True)
class UiConfig:
    """Where the stack lives and listens; env overrides let tests run one on free ports."""

    home: Path
    prefect_port: int
    localcloud_port: int
    profile: str
    workers: int = 1

    @classmethod
    def from_env(cls) -> UiConfig:
        """DOCFLOW_UI_HOME (default .prefect/), DOCFLOW_UI_PORT, DOCFLOW_UI_LOCALCLOUD_PORT,
        DOCFLOW_PROFILE, DOCFLOW_UI_WORKERS (workers on the local pool, default 1)."""
        env = os.environ
        workers = int(env.get("DOCFLOW_UI_WORKERS") or 1)
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(
                f"DOCFLOW_UI_WORKERS={workers}: start between 1 and {MAX_WORKERS} local workers"
            )
        return cls(
            workers=workers,
            home=Path(env.get("DOCFLOW_UI_HOME") or PROJECT_ROOT / ".prefect").resolve(),
            prefect_port=int(env.get("DOCFLOW_UI_PORT") or DEFAULT_PREFECT_PORT),
            localcloud_port=int(env.get("DOCFLOW_UI_LOCALCLOUD_PORT") or DEFAULT_LOCALCLOUD_PORT),
            profile=env.get("DOCFLOW_PROFILE") or "local",
        )


@dataclass
class UiState:
    """What a running `make ui` wrote down, so a second `make ui` can find it."""

    ui: list[float]
    api_url: str
    localcloud_url: str
    ready: bool = False
    children: dict[str, list[float]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The `docflow ui` process."""
        return int(self.ui[0])

    @property
    def ui_url(self) -> str:
        """The dashboard address."""
        return self.api_url.removesuffix("/api")

    def save(self, home: Path) -> None:
        """Write the state file."""
        (home / STATE_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, home: Path) -> UiState | None:
        """The state file's contents, or None when absent or unreadable."""
        try:
            return cls(**json.loads((home / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def process_identity(pid: int) -> list[float]:
    """[pid, start time]: tells a process from a later one that reused its pid."""
    return [float(pid), psutil.Process(pid).create_time()]


def same_process(ident: list[float]) -> bool:
    """True when the process recorded as ident is still the one running under that pid."""
    try:
        return psutil.Process(int(ident[0])).create_time() == ident[1]
    except psutil.NoSuchProcess:
        return False
