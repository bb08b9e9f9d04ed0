#!/usr/bin/env bash
# Create .venv-bench: kinodb (editable, dev extra) plus the peer loaders the benchmarks
# measure against, LeRobot's LeRobotDataset and robomimic's SequenceDataset (and the
# tfrecord package, which the RLDS export is timed against).
#
# Neither peer installs as-is on a CPU-only machine: both would pull a CUDA build of torch
# and torchvision. They are installed with --no-deps plus the few small packages their
# dataset modules import; torch stays the CPU build pinned in constraints.txt. The
# torchvision API they touch (transforms.ToTensor, io.VideoReader, set_video_backend) comes
# from the PyAV-backed shim in benchmarks/_shims/, which the benchmark scripts put on
# sys.path for the peer loaders only (benchmarks/_peers.py).
#
# Idempotent: a stamp file records a hash of this script; delete .venv-bench/.peers-stamp
# (or pass --force) to reinstall. Usage: bash benchmarks/setup_peers.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KINODB_BENCH_VENV:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.peers-stamp"
HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
CONSTRAINTS="$ROOT/constraints.txt"
TORCH_VERSION="2.13.0+cpu"

if [[ "${1:-}" == "--force" ]]; then
    rm -f "$STAMP"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "setup_peers: $VENV is up to date (remove $STAMP or pass --force to reinstall)"
    exit 0
fi

cd "$ROOT"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")

# torch from PyTorch's CPU index on Linux (PyPI's Linux wheels pull CUDA), as the Makefile does.
TORCH_INDEX="${TORCH_INDEX-$([[ "$(uname -s)" == Linux ]] && echo https://download.pytorch.org/whl/cpu)}"
if [[ -n "$TORCH_INDEX" ]]; then
    "${PIP[@]}" --retries 1 --no-deps torch --extra-index-url "$TORCH_INDEX"
fi
"${PIP[@]}" -e ".[dev]"

# The peers, without their dependency lists (those name torch and torchvision unpinned).
"${PIP[@]}" --no-deps "lerobot==0.4.4" "robomimic==0.3.0"

# What lerobot.datasets.lerobot_dataset imports at module level, within the bounds
# lerobot 0.4.4 declares: `datasets` and the Hub client for the dataset classes, accelerate
# because lerobot.utils.utils imports it. accelerate names torch, which the constraints
# keep at the CPU build. robomimic.utils.dataset needs only h5py, numpy, torch, tqdm (from
# the dev extra) and termcolor.
"${PIP[@]}" \
    "datasets>=4,<5" \
    "huggingface-hub>=0.34.2,<0.36" \
    "accelerate>=1.10,<2" \
    "jsonlines>=4,<5" \
    "packaging>=24.2,<26" \
    "termcolor>=2.4,<4"

# The RLDS export's peer writer (bench_export_rlds.py): protobuf's tf.train.Example, no TensorFlow.
"${PIP[@]}" "tfrecord>=1.14,<2"

got="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$got" != "$TORCH_VERSION" ]]; then
    echo "setup_peers: torch is $got in $VENV, expected $TORCH_VERSION; something pulled torch from the registry" >&2
    exit 1
fi
if "$PY" -m pip list 2>/dev/null | grep -qiE '^(nvidia-|triton |torchvision |torchcodec )'; then
    echo "setup_peers: CUDA packages, torchvision or torchcodec were installed into $VENV; remove them" >&2
    exit 1
fi

# Both peers import and read data written by kinodb's exporters.
"$PY" "$ROOT/benchmarks/_peers.py" --check

echo "$HASH" >"$STAMP"
echo "setup_peers: ready: $VENV (torch $got, lerobot 0.4.4, robomimic 0.3.0)"
