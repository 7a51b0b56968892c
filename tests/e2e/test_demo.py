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
    out = done.stdout
    assert "rollout of mlp:1 in stages 50%,100%: COMPLETED" in out
    assert "rollout of mlp:2 in stages 50%,100%: COMPLETED" in out
    assert "device-1 serves mlp:2" in out
    assert "device-2 serves mlp:2" in out
    # requests through the gateway land on its own session and on the agents (MQTT relay)
    answered = [line for line in out.splitlines() if "200 answered: per pool" in line]
    assert len(answered) == 2, out
    assert all("edge " in line and "local " in line for line in answered), answered
    assert "v2 " in answered[1]
    assert "errors:" not in out
    assert "audit log intact" in out
    assert "exit codes: gateway 0, device-1 0, device-2 0" in out
    assert "fabric stopped cleanly" in out


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
