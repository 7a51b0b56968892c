#!/usr/bin/env bash
# Create the two peer-server virtualenvs used by the side-by-side benchmarks:
#   bench/.peers/mlserver-venv  Seldon MLServer + onnxruntime + numpy
#   bench/.peers/triton-venv    nvidia-pytriton (bundles tritonserver) + onnxruntime + numpy
# They are kept apart from the project's .venv (protobuf 6 / tritonclient pins) and are driven
# from it by bench/peers/launch.py.
#
#   bench/peers/setup.sh [all|mlserver|triton]   (default all; `make triton-peer` runs `triton`)
#
# Idempotent: a venv whose packages import at the wanted versions is left alone.
# Environment: PYTHON (default python3) picks the interpreter; it must have a shared libpython
# (Triton's Python-backend stub links it). PEERS_FORCE=1 reinstalls.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
peers_dir="$repo/bench/.peers"
python="${PYTHON:-python3}"
force="${PEERS_FORCE:-0}"
which="${1:-all}"
case "$which" in
  all | mlserver | triton) ;;
  *)
    echo "usage: $0 [all|mlserver|triton]; got '$which'" >&2
    exit 2
    ;;
esac

# The peers run the same ONNX Runtime as the project's venv when it has one, so that a
# comparison measures the servers, not two ORT releases.
ort_spec="onnxruntime"
ort_check="True"
if ort_version="$("$repo/.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null)"; then
  ort_spec="onnxruntime==$ort_version"
  ort_check="onnxruntime.__version__ == '$ort_version'"
fi

mkdir -p "$peers_dir"

pip_install() {
  # $1 venv, rest: pip arguments. Drops pip's notes about unused local index folders.
  local venv="$1"
  shift
  "$venv/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }
}

ensure_venv() {
  # $1 venv dir, $2 Python check that must pass, rest: packages to install
  local venv="$1" check="$2"
  shift 2
  if [[ "$force" != "1" && -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "ok: $venv is already set up"
    return
  fi
  local start=$SECONDS
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "create: $venv with $("$python" --version)"
    "$python" -m venv "$venv"
  fi
  echo "install into $venv: $*"
  pip_install "$venv" --upgrade pip
  pip_install "$venv" "$@"
  "$venv/bin/python" -c "$check"
  echo "done: $venv in $((SECONDS - start)) s"
}

if [[ "$which" != triton ]]; then
  ensure_venv "$peers_dir/mlserver-venv" \
    "import mlserver, numpy, onnxruntime; assert mlserver.__version__ == '1.7.1' and $ort_check" \
    "mlserver==1.7.1" "$ort_spec" numpy
  echo "mlserver-venv: $("$peers_dir/mlserver-venv/bin/python" -c \
    'import mlserver, onnxruntime; print("mlserver", mlserver.__version__, "| onnxruntime", onnxruntime.__version__)')"
fi
[[ "$which" != mlserver ]] || exit 0
ensure_venv "$peers_dir/triton-venv" \
  "import importlib.metadata as m, numpy, onnxruntime, pytriton; assert m.version('nvidia-pytriton') == '0.7.0' and $ort_check" \
  "nvidia-pytriton==0.7.0" "$ort_spec" numpy

# Where the wheel keeps Triton, and whether this interpreter can host its Python backend.
"$peers_dir/triton-venv/bin/python" - <<'EOF'
import importlib.metadata as metadata
import pathlib
import sys
import sysconfig

import onnxruntime
import pytriton

root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
version = f"{sys.version_info[0]}.{sys.version_info[1]}"
stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
print(
    "triton-venv: nvidia-pytriton", metadata.version("nvidia-pytriton"),
    "| onnxruntime", onnxruntime.__version__,
)
print("  tritonserver:", root / "bin" / "tritonserver")
print("  python backend:", root / "backends" / "python")
print(f"  stub for Python {version}:", stub if stub.exists() else "MISSING")
if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
    sys.exit(f"{sys.executable} has no shared libpython: the Python backend stub cannot load it")
print("  libpython:", pathlib.Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("LDLIBRARY"))
if not stub.exists():
    sys.exit(f"this wheel ships no Python-backend stub for Python {version}")
EOF
