"""Where security and admin events are recorded: the model store's hash-chained audit log.

The kernel does not import the store (``model_store`` depends on ``edgefabric``, never the
reverse); the recorder is looked up by module name, the way the CLI finds its command groups,
so a gateway installed without the store simply records nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

__all__ = ["AuditRecorder", "store_recorder"]

_STORE_MODULE = "model_store.token_cli"


class AuditRecorder(Protocol):
    """Appends one entry (blocking file I/O: call it off the event loop)."""

    def __call__(
        self, *, actor: str, action: str, subject: str, details: Mapping[str, Any]
    ) -> None: ...


def store_recorder(home: Path) -> AuditRecorder | None:
    """A recorder appending to the audit log of the store at ``home``; ``None`` when the
    store is not installed."""
    try:
        module = importlib.import_module(_STORE_MODULE)
    except ModuleNotFoundError:
        return None
    return cast(AuditRecorder, module.audit_recorder(home))
