"""The README's ``make demo`` path, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_the_fabric_and_calls_it():
    done = subprocess.run(
        [sys.executable, "-m", "deploy.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mlp: 4 rows -> predicted classes" in done.stdout
    assert "text: [b'EDGE', b'FABRIC']" in done.stdout
    assert "INVALID_ARGUMENT input 'x'" in done.stdout
    assert "gateway drained and exited with code 0" in done.stdout
    assert "camera-1: serving mlp:2" in done.stdout
    assert "camera-2 answers with version 1" in done.stdout
    assert "camera-1 answers with version 2" in done.stdout
    assert "audit log intact" in done.stdout
    assert "fleet stopped cleanly" in done.stdout


def test_cli_refuses_a_missing_repository_clearly(tmp_path):
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefabric.cli",
            "gateway",
            "serve",
            "--model-repository",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"model repository {missing} is not a directory" in done.stderr
    assert "Traceback" not in done.stderr
