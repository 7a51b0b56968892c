"""Running the ``edgefabric`` command line as a user does, against one store home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_edgefabric(home: Path, *args: str) -> str:
    """``edgefabric ARGS`` in a child process with ``EDGEFABRIC_HOME=home``; its stdout.

    Raises ``CalledProcessError`` when the command exits non-zero.
    """
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
