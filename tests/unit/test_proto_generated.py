"""The committed generated code is exactly what protoc makes of proto/ today (`make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "proto").rglob("*.proto"))


def generate(out: Path) -> dict[str, bytes]:
    """Run protoc as `make proto` does, into ``out``; relative path -> bytes."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={out}",
            f"--pyi_out={out}",
            *PROTOS,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in out.rglob("*_pb2.py*")}


def test_protos_exist() -> None:
    assert "proto/edgefabric/wire/v1/repo.proto" in PROTOS


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    stale = [name for name, content in fresh.items() if (ROOT / name).read_bytes() != content]
    assert not stale, f"regenerate with `make proto`: {stale}"


def test_no_generated_file_without_its_proto(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = {
        path.relative_to(ROOT).as_posix() for path in (ROOT / "edgefabric").rglob("*_pb2.py*")
    }
    assert committed <= fresh.keys(), (
        f"generated files whose .proto is gone: {committed - fresh.keys()}"
    )
