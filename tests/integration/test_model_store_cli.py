"""``edgefabric model|keys|audit`` against a real store: SQLite, blobs, TUF metadata, ORT."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from edgefabric.cli import main
from edgefabric.samples import mlp_model, unknown_operator_model
from model_store.home import StoreHome
from model_store.store import ModelStore
from tests.conftest import GatewayThread

pytestmark = pytest.mark.integration

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``edgefabric`` in-process against ``home``; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        group, action, *rest = args
        code = main([group, action, "--home", str(home), *rest])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_model().SerializeToString())
    return path


@pytest.fixture
def ready(cli: Cli) -> Cli:
    """A store with keys."""
    code, _, err = cli("keys", "init")
    assert code == 0, err
    return cli


def _state(home: Path) -> dict[str, str]:
    """Every file under the store (but the lock and SQLite's side files), by content hash."""
    skip = {"store.lock", "registry.sqlite3-wal", "registry.sqlite3-shm"}
    files = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name not in skip and p.name != "registry.sqlite3"
    }
    store = ModelStore(StoreHome(home))
    try:
        files["registry"] = repr([(v.ref, v.stage.value) for v in store.registry.versions()])
    finally:
        store.close()
    return files


def _signed_targets(home: Path) -> dict[str, dict[str, object]]:
    metadata = home / "tuf" / "metadata"
    newest = max(metadata.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    return json.loads(newest.read_text())["signed"]["targets"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- happy paths


def test_push_list_show(ready: Cli, model_file: Path) -> None:
    code, out, err = ready(
        "model", "push", str(model_file), "--name", "mlp", "--label", "team=vision",
        "--lineage", "source_commit=0badc0de", "--lineage", "dataset_hash=d1",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("pushed mlp:1 sha256:")
    code, out, _ = ready("model", "push", str(model_file), "--name", "mlp")
    assert "pushed mlp:2" in out
    code, out, _ = ready("model", "list")
    assert out.splitlines()[1].split() == ["mlp", "2", "2", "-", "-"]
    code, out, _ = ready("model", "show", "mlp:1")
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[:2] == ["1", "none"]
    assert "signed" in row
    assert "in  x FP32 [?,16]" in out
    assert "lineage: dataset_hash=d1, source_commit=0badc0de" in out
    assert "labels: team=vision" in out


def test_each_version_is_a_signed_target_carrying_its_contract(
    ready: Cli, model_file: Path, home: Path
) -> None:
    ready("model", "push", str(model_file), "--name", "mlp", "--label", "site=plant-7")
    target = _signed_targets(home)["models/mlp/1/model.onnx"]
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert target["hashes"] == {"sha256": digest}
    assert target["length"] == model_file.stat().st_size
    custom = target["custom"]
    assert isinstance(custom, dict)
    assert custom["name"] == "mlp"
    assert custom["version"] == 1
    assert custom["stage"] == "none"
    assert custom["labels"] == {"site": "plant-7"}
    assert custom["contract"]["runtime"] == "onnxruntime>=1.13"
    assert custom["contract"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [None, 16]}]


def test_golden_vectors_are_run_stored_and_signed(
    ready: Cli, model_file: Path, home: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "golden.npz"
    np.savez(inputs, x=np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16))
    code, out, err = ready(
        "model", "push", str(model_file), "--name", "mlp", "--golden", str(inputs), "--rtol", "1e-3"
    )
    assert code == 0, err
    assert "with golden vectors" in out
    targets = _signed_targets(home)
    golden = targets["models/mlp/1/model.onnx"]["custom"]["golden"]  # type: ignore[index]
    assert golden["path"] == "models/mlp/1/golden.npz"
    assert golden["tolerances"] == {"logits": {"rtol": "0.001", "atol": "1e-05"}}
    assert targets["models/mlp/1/golden.npz"]["hashes"] == {"sha256": golden["sha256"]}


def test_promotion_archives_the_previous_production_version(ready: Cli, model_file: Path) -> None:
    for _ in range(2):
        ready("model", "push", str(model_file), "--name", "mlp")
    assert ready("model", "promote", "mlp:1", "--stage", "production")[0] == 0
    assert ready("model", "promote", "mlp:2", "--stage", "staging")[0] == 0
    code, out, _ = ready("model", "promote", "mlp:2", "--stage", "production")
    assert (code, out.strip()) == (0, "mlp:2 is now in production")
    _, out, _ = ready("model", "show", "mlp")
    stages = [line.split()[:2] for line in out.splitlines()[1:3]]
    assert stages == [["1", "archived"], ["2", "production"]]


def test_verify_passes_on_an_intact_store(ready: Cli, model_file: Path) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    code, out, _ = ready("model", "verify")
    assert code == 0
    assert out.splitlines() == ["repository: ok", "mlp:1: ok"]


def test_export_is_served_by_the_gateway(
    ready: Cli,
    model_file: Path,
    tmp_path: Path,
    start_gateway: Callable[..., GatewayThread],
) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    ready("model", "push", str(model_file), "--name", "mlp")
    ready("model", "promote", "mlp:2", "--stage", "production")
    repository = tmp_path / "exported"
    code, _, err = ready("model", "export", "mlp", "--stage", "production", "--to", str(repository))
    assert code == 0, err
    assert sorted(p.name for p in (repository / "mlp").iterdir()) == ["2", "config.pbtxt"]
    gateway = start_gateway(repository)
    client = grpcclient.InferenceServerClient(gateway.address)
    assert client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("mlp", "1")
    batch = np.ones((3, 16), np.float32)
    request = grpcclient.InferInput("x", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    result = client.infer("mlp", [request], model_version="2").as_numpy("logits")
    assert result is not None
    assert result.shape == (3, 8)
    client.close()


def test_key_rotation_keeps_the_repository_verifiable(ready: Cli, model_file: Path) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    code, out, err = ready("keys", "rotate", "--role", "root")
    assert code == 0, err
    assert "root is now version 2" in out
    assert ready("model", "verify")[0] == 0
    assert ready("audit", "verify")[0] == 0


def test_every_change_is_audited_and_the_chain_verifies(
    ready: Cli, model_file: Path, home: Path
) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    ready("model", "promote", "mlp:1", "--stage", "staging")
    ready("model", "deprecate", "mlp:1")
    code, out, _ = ready("audit", "list")
    actions = [line.split()[3] for line in out.splitlines()[1:]]
    assert actions == ["keys.init", "model.push", "model.promote", "model.deprecate"]
    assert ready("audit", "verify")[:2] == (0, "audit log intact: 4 entries\n")
    log = home / "audit.log"
    log.write_text(log.read_text().replace('"mlp:1"', '"mlp:9"', 1))
    code, out, _ = ready("audit", "verify")
    assert code == 1
    assert "content was edited" in out


# ---------------------------------------------------------------------- errors


def _ort_unloadable(path: Path) -> Path:
    path.write_bytes(unknown_operator_model().SerializeToString())
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p.write_bytes(b"\x08\x07garbage that is not a model") and p,
            "not an ONNX model",
        ),
        (lambda p: p.write_text("hello") and p, "not an ONNX model"),
        (_ort_unloadable, "ONNX Runtime could not load the model"),
        (lambda p: p, "no such model file"),
    ],
    ids=["corrupt", "text", "ort-load-fails", "missing-file"],
)
def test_unusable_files_are_refused_and_the_store_is_unchanged(
    ready: Cli, home: Path, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    before = _state(home)
    path = make(tmp_path / "bad.onnx")
    code, _, err = ready("model", "push", str(path), "--name", "bad")
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert _state(home) == before


def test_a_duplicate_version_is_refused_and_the_store_is_unchanged(
    ready: Cli, model_file: Path, home: Path
) -> None:
    ready("model", "push", str(model_file), "--name", "mlp", "--version", "3")
    before = _state(home)
    code, _, err = ready("model", "push", str(model_file), "--name", "mlp", "--version", "3")
    assert code == 1
    assert "error: mlp:3 already exists" in err
    assert _state(home) == before


def test_unknown_names_and_versions(ready: Cli, model_file: Path) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    assert ready("model", "show", "nope")[2] == "error: no model named 'nope' in the store\n"
    code, _, err = ready("model", "promote", "mlp:9", "--stage", "staging")
    assert (code, err) == (1, "error: model 'mlp' has no version 9; it has [1]\n")
    assert "expected NAME:VERSION" in ready("model", "deprecate", "mlp")[2]


def test_a_deprecated_version_cannot_be_promoted(ready: Cli, model_file: Path, home: Path) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    ready("model", "deprecate", "mlp:1")
    before = _state(home)
    code, _, err = ready("model", "promote", "mlp:1", "--stage", "production")
    assert (code, err) == (1, "error: mlp:1 is deprecated and cannot be promoted\n")
    assert _state(home) == before


def test_pushing_without_keys_says_how_to_make_them(cli: Cli, model_file: Path, home: Path) -> None:
    code, _, err = cli("model", "push", str(model_file), "--name", "mlp")
    assert code == 1
    assert "edgefabric keys init" in err
    assert not list((home / "blobs").rglob("*")) if (home / "blobs").exists() else True


def test_a_damaged_blob_fails_verify_and_export(
    ready: Cli, model_file: Path, home: Path, tmp_path: Path
) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    ready("model", "promote", "mlp:1", "--stage", "production")
    (blob,) = (home / "blobs").rglob("*/*/*")
    os.chmod(blob, 0o644)
    blob.write_bytes(b"bit rot")
    code, out, _ = ready("model", "verify", "mlp:1")
    assert code == 1
    assert "is damaged" in out
    code, _, err = ready("model", "export", "mlp", "--to", str(tmp_path / "out"))
    assert code == 1
    assert "is damaged" in err
    assert not (tmp_path / "out" / "mlp").exists()


def test_edited_signed_metadata_fails_verify(ready: Cli, model_file: Path, home: Path) -> None:
    ready("model", "push", str(model_file), "--name", "mlp")
    metadata = home / "tuf" / "metadata"
    newest = max(metadata.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    document = json.loads(newest.read_text())
    document["signed"]["targets"]["models/mlp/1/model.onnx"]["length"] += 1
    newest.write_text(json.dumps(document))
    code, out, _ = ready("model", "verify")
    assert code == 1
    assert out.startswith("repository: FAILED")


def test_concurrent_pushes_take_turns(ready: Cli, model_file: Path, home: Path) -> None:
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "model", "push", str(model_file)]
    processes = [
        subprocess.Popen([*command, "--name", "mlp"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    versions = sorted(int(out.split()[1].split(":")[1]) for out in outputs)
    assert versions == [1, 2, 3, 4]
    assert sorted(k for k in _signed_targets(home)) == [
        f"models/mlp/{n}/model.onnx" for n in range(1, 5)
    ]
    assert ready("audit", "verify")[:2] == (0, "audit log intact: 5 entries\n")
    assert ready("model", "verify")[0] == 0
