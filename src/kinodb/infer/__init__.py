"""Real-time policy inference with ONNX Runtime, compatible with K-Scale kinfer packages.

Load a ``.kinfer`` package of kinfer 0.4, 0.5 or 0.6 (or a plain ``.onnx`` step
function with the same inputs), step it with the carry threaded internally, run it at a
fixed rate against a provider with kinodb's per-input getters or kinfer 0.6.1's
``get_inputs``, log kinfer-style NDJSON telemetry, and append each run
to a ``.kdb`` file as training data. Needs the ``infer`` extra (onnxruntime, onnx);
`export_torch` also needs torch.

Example:
    >>> from kinodb import infer
    >>> model = infer.load_model("walk.kinfer")
    >>> stats = infer.Runner(model, provider, rate_hz=50, duration_s=10, record_to="rollouts.kdb").run()
"""

from __future__ import annotations

from kinodb.infer._errors import InferError
from kinodb.infer._package import Package, pack, read_package
from kinodb.infer._recording import append_spill
from kinodb.infer._replay_provider import KdbReplayProvider, parse_state_map
from kinodb.infer.export import ExportReport, export_torch
from kinodb.infer.model import InputSpec, Model, Signature, load_model
from kinodb.infer.providers import CallableProvider, Provider, ProviderMetadata
from kinodb.infer.replay import ReplayReport, replay
from kinodb.infer.runner import Runner
from kinodb.infer.telemetry import NdjsonLogger, read_log, resolve_log_path

__all__ = [
    "CallableProvider",
    "ExportReport",
    "InferError",
    "InputSpec",
    "KdbReplayProvider",
    "Model",
    "NdjsonLogger",
    "Package",
    "Provider",
    "ProviderMetadata",
    "ReplayReport",
    "Runner",
    "Signature",
    "append_spill",
    "export_torch",
    "load_model",
    "pack",
    "parse_state_map",
    "read_log",
    "read_package",
    "replay",
    "resolve_log_path",
]
