"""The project's own commands as child processes: start, wait for the ready line, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["Child", "run_command"]

_STOP_GRACE_S = 30.0


def _command(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", *args]


def _environment(home: Path) -> dict[str, str]:
    return {**os.environ, "EDGEFABRIC_HOME": str(home)}


def run_command(home: Path, *args: str) -> str:
    """Run one ``edgefabric`` command against the store ``home``; its stdout.

    A failing command raises :class:`RuntimeError` carrying what it printed on stderr.
    """
    done = subprocess.run(  # noqa: S603  (this interpreter running the project's own CLI)
        _command(args), env=_environment(home), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"edgefabric {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class Child:
    """A long-running ``edgefabric`` command that prints one line when it is ready."""

    def __init__(self, name: str, home: Path, *args: str, ready: str, extra_lines: int = 0) -> None:
        self.name = name
        self._process = subprocess.Popen(  # noqa: S603  (the project's own CLI)
            _command(args),
            env=_environment(home),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops children in order
        )
        stdout = self._process.stdout
        lines = [stdout.readline().strip() for _ in range(1 + extra_lines)] if stdout else [""]
        self.ready_line = lines[0]
        self.extra_lines = lines[1:]
        """Lines printed right after the ready line (e.g. a second listener's address)."""
        if ready not in self.ready_line:
            self._process.kill()
            self._process.wait()
            raise RuntimeError(
                f"{name} did not start: expected a line with {ready!r}, got "
                f"{self.ready_line!r} (exit code {self._process.returncode})"
            )

    @property
    def endpoint(self) -> str:
        """The HOST:PORT the ready line ends with."""
        return self.ready_line.rsplit(" ", 1)[-1]

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process.poll() is None

    def stop(self) -> int:
        """SIGTERM, wait for a clean exit (SIGKILL after a grace period); the exit code."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        return self._process.returncode
