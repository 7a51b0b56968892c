"""Start the benchmark peers (Seldon MLServer, a real Triton) on an ONNX file, each in its venv.

Importable from the project's venv: this module uses the standard library only; the readiness
probe imports ``tritonclient.grpc`` when it runs. The peers themselves live in
``bench/.peers/{mlserver,triton}-venv`` (made by ``bench/peers/setup.sh``) and run as
subprocesses, so their protobuf/grpc/onnxruntime pins never meet the project's.

Ports: each server binds its gRPC port itself (port 0, on 127.0.0.1) and the launcher reads
the port it got from the kernel's socket table for that very process (``/proc/<pid>/fd`` and
``/proc/<pid>/net/tcp*``), then confirms it answers KServe v2 ``ServerReady``/``ModelReady``.
Nothing is pre-bound and released by the launcher, so there is no window in which another
process can take the port; no port is guessed, so there is nothing to retry. Linux only.

    .venv/bin/python -m bench.peers.launch [--model mlp|cnn] [--peer mlserver|triton|all]

starts each peer on a sample model, sends one inference with ``tritonclient.grpc``, compares
it with ONNX Runtime in-process, prints one JSON object per peer, and stops the peer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent
VENVS_DIR = PEERS_DIR.parent / ".peers"
MLSERVER_VENV = VENVS_DIR / "mlserver-venv"
TRITON_VENV = VENVS_DIR / "triton-venv"

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 40

# Environment variables of the launching process that must not leak into a peer's interpreter.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")


class PeerError(RuntimeError):
    """A peer could not be set up, did not start, or did not become ready in time."""


@dataclass
class Peer:
    """A running peer server; stop it with ``stop()`` or by leaving its ``with`` block."""

    kind: str
    model_name: str
    grpc_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    server_version: str = ""
    startup_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{LOOPBACK}:{self.grpc_port}"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (both servers shut down gracefully on it), then SIGKILL its process group."""
        return _terminate(self.process, timeout_s)

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- MLServer


def write_mlserver_config(
    model_path: Path,
    workdir: Path,
    *,
    model_name: str,
    max_batch_size: int,
    max_batch_time_s: float,
    intra_op_num_threads: int = 0,
) -> Path:
    """Write ``settings.json`` and ``models/<name>/{model-settings.json,runtime.py}``.

    Adaptive batching is on when ``max_batch_size > 1`` and ``max_batch_time_s > 0``;
    ``parallel_workers: 0`` runs inference in the server process itself. HTTP binds a free
    port (it cannot be turned off); the metrics server is off. Returns the settings folder.
    """
    model_dir = workdir / "models" / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": LOOPBACK,
        "grpc_port": 0,
        "http_port": 0,
        "metrics_endpoint": None,
        "model_repository_root": str(workdir / "models"),
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": model_name,
        "implementation": "runtime.OnnxModel",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {
            "uri": str(model_path.resolve()),
            "version": "1",
            "extra": {"intra_op_num_threads": intra_op_num_threads},
        },
    }
    _write_json(workdir / "settings.json", settings)
    _write_json(model_dir / "model-settings.json", model_settings)
    # MLServer puts the folder of model-settings.json on sys.path to import `implementation`.
    shutil.copyfile(PEERS_DIR / "mlserver" / "runtime.py", model_dir / "runtime.py")
    return workdir


def start_mlserver(
    model_path: Path,
    workdir: Path,
    max_batch_size: int,
    max_batch_time_s: float,
    *,
    model_name: str | None = None,
    intra_op_num_threads: int = 0,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Peer:
    """Start Seldon MLServer serving ``model_path`` as ``model_name`` with adaptive batching."""
    name = model_name or default_model_name(model_path)
    mlserver = _require(MLSERVER_VENV / "bin" / "mlserver")
    workdir = workdir.resolve()
    write_mlserver_config(
        model_path,
        workdir,
        model_name=name,
        max_batch_size=max_batch_size,
        max_batch_time_s=max_batch_time_s,
        intra_op_num_threads=intra_op_num_threads,
    )
    env = _clean_env({"MLSERVER_": None})
    command = [str(mlserver), "start", str(workdir)]
    peer = _spawn(
        "mlserver", name, command, env=env, workdir=workdir, ready_timeout_s=ready_timeout_s
    )
    peer.extra = {"max_batch_size": max_batch_size, "max_batch_time_s": max_batch_time_s}
    return peer


# --------------------------------------------------------------------------- Triton

_TRITON_INFO = """
import json, pathlib, sys, sysconfig
import pytriton
print(json.dumps({
    "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "purelib": sysconfig.get_path("purelib"),
    "pytriton": str(pathlib.Path(pytriton.__file__).parent),
}))
"""


@dataclass(frozen=True)
class TritonDist:
    """Where the ``nvidia-pytriton`` wheel keeps Triton, and the venv's interpreter facts."""

    venv: Path
    python_version: str  # "3.11": picks the matching Python-backend stub
    libpython_dir: Path  # the venv interpreter's own libpython, for the stub (LD_LIBRARY_PATH)
    site_packages: Path
    server_root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.server_root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server_root / "backends"

    @property
    def caches(self) -> Path:
        return self.server_root / "caches"

    @property
    def stub(self) -> Path:
        return (
            self.server_root
            / "python_backend_stubs"
            / self.python_version
            / "triton_python_backend_stub"
        )

    @property
    def bundled_libs(self) -> Path:
        # auditwheel's folder of vendored shared libraries, beside the package.
        return self.site_packages / "nvidia_pytriton.libs"


def triton_dist(venv: Path = TRITON_VENV) -> TritonDist:
    """Ask the Triton venv's interpreter where pytriton lives and what libpython it uses."""
    python = _require(venv / "bin" / "python")
    info = json.loads(_check_output([str(python), "-c", _TRITON_INFO]))
    if not info["shared"]:
        raise PeerError(f"{python} has no shared libpython; the Python backend stub needs one")
    dist = TritonDist(
        venv=venv,
        python_version=info["python"],
        libpython_dir=Path(info["libdir"]),
        site_packages=Path(info["purelib"]),
        server_root=Path(info["pytriton"]) / "tritonserver",
    )
    _require(dist.binary)
    _require(dist.stub)
    return dist


def onnx_signature(model_path: Path, venv: Path = TRITON_VENV) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file (name, KServe datatype, shape with -1 for dynamic)."""
    python = _require(venv / "bin" / "python")
    script = PEERS_DIR / "onnx_signature.py"
    signature: dict[str, list[dict[str, Any]]] = json.loads(
        _check_output([str(python), str(script), str(model_path)])
    )
    return signature


def triton_model_config(
    model_name: str,
    model_path: Path,
    signature: Mapping[str, list[dict[str, Any]]],
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    intra_op_num_threads: int = 0,
) -> str:
    """A ``config.pbtxt`` for the Python-backend model, with the dynamic batcher on."""

    def tensors(kind: str) -> str:
        entries = []
        for tensor in signature[kind]:
            shape = tensor["shape"]
            if not shape or shape[0] != -1:
                raise PeerError(f"{model_path}: {tensor['name']} has no dynamic batch dimension")
            datatype = "STRING" if tensor["datatype"] == "BYTES" else tensor["datatype"]
            dims = ", ".join(str(dim) for dim in shape[1:])
            entries.append(
                f'  {{ name: "{tensor["name"]}" data_type: TYPE_{datatype} dims: [ {dims} ] }}'
            )
        return f"{kind[:-1]} [\n" + ",\n".join(entries) + "\n]"

    def parameter(key: str, value: str) -> str:
        return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'

    return "\n".join(
        [
            f'name: "{model_name}"',
            'backend: "python"',
            f"max_batch_size: {max_batch_size}",
            tensors("inputs"),
            tensors("outputs"),
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
            parameter("onnx_path", str(model_path.resolve())),
            parameter("intra_op_num_threads", str(intra_op_num_threads)),
            "",
        ]
    )


def write_triton_repository(
    model_path: Path,
    workdir: Path,
    dist: TritonDist,
    *,
    model_name: str,
    max_batch_size: int,
    max_queue_delay_us: int,
    intra_op_num_threads: int = 0,
) -> Path:
    """Write ``models/<name>/{config.pbtxt,1/model.py}`` and ``backends/python/``.

    The wheel ships one Python-backend stub per Python version, beside the backend rather than
    in it; the backend runs ``triton_python_backend_stub`` from its own folder only. So the
    backend folder is assembled in the workdir: the wheel's backend library and utilities plus
    the stub matching the venv's Python. Returns the model repository.
    """
    backend_dir = workdir / "backends" / "python"
    backend_dir.mkdir(parents=True, exist_ok=True)
    for item in (dist.backends / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, backend_dir / item.name)
    shutil.copy2(dist.stub, backend_dir / "triton_python_backend_stub")

    repository = workdir / "models"
    model_dir = repository / model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = triton_model_config(
        model_name,
        model_path,
        onnx_signature(model_path),
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        intra_op_num_threads=intra_op_num_threads,
    )
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    shutil.copyfile(PEERS_DIR / "triton" / "model.py", model_dir / "1" / "model.py")
    return repository


def start_triton(
    model_path: Path,
    workdir: Path,
    max_batch_size: int,
    max_queue_delay_us: int,
    *,
    model_name: str | None = None,
    intra_op_num_threads: int = 0,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Peer:
    """Start the wheel's ``tritonserver`` (CPU, gRPC only) serving ``model_path``."""
    name = model_name or default_model_name(model_path)
    dist = triton_dist()
    workdir = workdir.resolve()
    repository = write_triton_repository(
        model_path,
        workdir,
        dist,
        model_name=name,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        intra_op_num_threads=intra_op_num_threads,
    )
    env = _clean_env(
        {
            # The stub links libpython3.X.so.1.0: it must be this interpreter's, not whichever
            # the system's loader finds first; the wheel's vendored libraries come after it.
            "LD_LIBRARY_PATH": f"{dist.libpython_dir}:{dist.bundled_libs}",
            # The stub starts Python isolated (PYTHONPATH/PYTHONHOME are ignored) with program
            # name "python3", looked up on PATH: the venv's bin first makes sys.prefix the venv.
            "PATH": f"{dist.venv / 'bin'}:{os.environ.get('PATH', os.defpath)}",
        }
    )
    # Python-backend shared-memory regions are named; a unique prefix keeps servers apart.
    shm_prefix = f"efpeer{os.getpid()}x{secrets.token_hex(4)}_"
    command = [
        str(dist.binary),
        f"--model-repository={repository}",
        f"--grpc-address={LOOPBACK}",
        "--grpc-port=0",
        "--allow-http=false",
        "--allow-metrics=false",
        f"--backend-directory={workdir / 'backends'}",
        f"--cache-directory={dist.caches}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--exit-timeout-secs=10",
        "--log-verbose=0",
    ]
    peer = _spawn(
        "triton", name, command, env=env, workdir=workdir, ready_timeout_s=ready_timeout_s
    )
    peer.extra = {"max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us}
    return peer


# --------------------------------------------------------------------------- shared parts


def default_model_name(model_path: Path) -> str:
    """``<repo>/<name>/<version>/model.onnx`` -> ``name``; otherwise the file's stem."""
    if model_path.parent.name.isdigit():
        return model_path.parent.parent.name
    return model_path.stem


def _spawn(
    kind: str,
    model_name: str,
    command: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    ready_timeout_s: float,
) -> Peer:
    log_path = workdir / f"{kind}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        # A session of its own: a forced stop reaches the server's children (Triton's stubs).
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port, version = _wait_ready(process, model_name, log_path, ready_timeout_s)
    except BaseException:
        _terminate(process, STOP_TIMEOUT_S)
        raise
    return Peer(
        kind=kind,
        model_name=model_name,
        grpc_port=port,
        process=process,
        log_path=log_path,
        server_version=version,
        startup_s=round(time.monotonic() - started, 3),
    )


def _wait_ready(
    process: subprocess.Popen[bytes], model_name: str, log_path: Path, timeout_s: float
) -> tuple[int, str]:
    """Poll until one of the process's own listening ports answers ModelReady for the model."""
    deadline = time.monotonic() + timeout_s
    not_grpc: set[int] = set()
    while True:
        if process.poll() is not None:
            raise PeerError(
                f"{process.args!r} exited with {process.returncode} before it was ready\n"
                + _log_tail(log_path)
            )
        for port in sorted(listening_ports(process.pid) - not_grpc):
            state = _probe(port, model_name)
            if state is None:
                not_grpc.add(port)  # MLServer's HTTP port (uvicorn logs one bad request)
            elif state:
                return port, state
        if time.monotonic() > deadline:
            raise PeerError(
                f"{process.args!r} not ready within {timeout_s:.0f} s\n" + _log_tail(log_path)
            )
        time.sleep(0.2)


def _probe(port: int, model_name: str) -> str | None:
    """``None``: not a KServe v2 gRPC port; ``""``: not ready yet; else ``"name version"``."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415 (kept out of module import)
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(f"{LOOPBACK}:{port}")
    try:
        try:
            live = client.is_server_live(client_timeout=2.0)
        except InferenceServerException:
            return None
        if not (live and client.is_server_ready() and client.is_model_ready(model_name)):
            return ""
        metadata = client.get_server_metadata()
        return f"{metadata.name} {metadata.version}"
    except InferenceServerException:
        return ""
    finally:
        client.close()


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state whose sockets are open in process ``pid`` (Linux /proc)."""
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed since listed
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except FileNotFoundError:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _clean_env(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The launcher's environment without Python/loader variables; prefixes map to None."""
    drop = [key for key, value in overrides.items() if value is None]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED_ENV and not any(key.startswith(prefix) for prefix in drop)
    }
    env.update({key: value for key, value in overrides.items() if value is not None})
    return env


def _require(path: Path) -> Path:
    if not path.exists():
        raise PeerError(f"{path} is missing: run bench/peers/setup.sh first")
    return path


def _check_output(command: list[str]) -> str:
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=_clean_env({})
    )
    if result.returncode != 0:
        raise PeerError(f"{command!r} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return f"--- last lines of {path} ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])


# --------------------------------------------------------------------------- demo


def _one_inference(peer: Peer, model_path: Path, rows: int) -> dict[str, Any]:
    """Send one request with tritonclient.grpc; compare with ONNX Runtime in-process."""
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    feeds = {
        item.name: rng.standard_normal(
            [rows, *(dim if isinstance(dim, int) else rows for dim in item.shape[1:])]
        ).astype(np.float32)
        for item in session.get_inputs()
    }
    names = [item.name for item in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds), strict=True))

    client = grpcclient.InferenceServerClient(peer.url)
    try:
        inputs = []
        for name, array in feeds.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        started = time.perf_counter()
        result = client.infer(peer.model_name, inputs, outputs=outputs, client_timeout=30.0)
        latency_ms = (time.perf_counter() - started) * 1000
    finally:
        client.close()
    got = {name: result.as_numpy(name) for name in names}
    diff = max(float(np.max(np.abs(got[n] - expected[n]))) for n in names)
    return {
        "peer": peer.kind,
        "server": peer.server_version,
        "model": peer.model_name,
        "grpc_port": peer.grpc_port,
        "startup_s": peer.startup_s,
        "batching": peer.extra,
        "rows": rows,
        "latency_ms": round(latency_ms, 3),
        "outputs": {n: {"shape": list(got[n].shape), "row0": got[n][0].tolist()} for n in names},
        "max_abs_diff_vs_ort": diff,
        "match": all(np.allclose(got[n], expected[n], rtol=1e-5, atol=1e-6) for n in names),
    }


def main() -> int:
    import argparse  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from edgefabric.samples import SAMPLE_MODELS, write_model  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--peer", default="all", choices=["mlserver", "triton", "all"])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-us", type=int, default=500)
    args = parser.parse_args()

    peers = ["mlserver", "triton"] if args.peer == "all" else [args.peer]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ef-peers-") as tmp:
        root = Path(tmp)
        model_path = write_model(root / "repo", args.model, SAMPLE_MODELS[args.model][0]())
        for kind in peers:
            workdir = root / kind
            workdir.mkdir()
            if kind == "mlserver":
                peer = start_mlserver(
                    model_path, workdir, args.max_batch_size, args.max_delay_us / 1e6
                )
            else:
                peer = start_triton(model_path, workdir, args.max_batch_size, args.max_delay_us)
            with peer:
                report = _one_inference(peer, model_path, args.rows)
            report["exit_code"] = peer.process.returncode
            print(json.dumps(report))
            failed += not report["match"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
