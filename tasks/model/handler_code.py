"""The model container's code (``inference/``) used in this process, imported as the container does.

The container puts ``code/`` on ``sys.path`` and its modules import each other by their own names
(``from request_contract import ...``), so they are not a package of ours: this appends the
folder to ``sys.path`` (after everything else, so it shadows nothing) and imports one by name.
Counting prompt tokens here with the handler's own ``prompt_ids`` keeps the two counts equal.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from tasks.model.archive import DEFAULT_CODE_DIR


def handler_module(name: str) -> ModuleType:
    """The container module ``name`` (``request_contract``, ``loaded_model``, ...)."""
    code_dir = str(DEFAULT_CODE_DIR)
    if code_dir not in sys.path:
        sys.path.append(code_dir)
    return importlib.import_module(name)
