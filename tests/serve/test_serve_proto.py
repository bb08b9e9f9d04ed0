"""The committed stubs are what scripts/gen_proto.sh makes from the .proto; imports stay light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "src" / "kinodb" / "serve" / "_proto"
GENERATED = ("kinodb_pb2.py", "kinodb_pb2.pyi", "kinodb_pb2_grpc.py")


def test_regenerating_the_stubs_is_a_no_op(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, env=env,
                   capture_output=True)  # fmt: skip
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (STUBS / name).read_bytes(), (
            f"{name} is stale: run scripts/gen_proto.sh"
        )


def test_stubs_import_from_the_package() -> None:
    from kinodb.serve._proto import kinodb_pb2, kinodb_pb2_grpc

    assert kinodb_pb2.DESCRIPTOR.package == "kinodb.v1"
    assert kinodb_pb2_grpc.KinoServiceStub.__module__ == "kinodb.serve._proto.kinodb_pb2_grpc"


def test_import_costs() -> None:
    code = (
        "import sys, kinodb; assert 'grpc' not in sys.modules, 'kinodb imported grpc'\n"
        "import kinodb.remote; assert 'grpc' in sys.modules\n"
        "assert 'torch' not in sys.modules, 'kinodb.remote imported torch'\n"
        "assert kinodb.remote.KinoRemoteDataset.__name__ == 'KinoRemoteDataset'\n"
        "assert 'torch' in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_grpcio_or_protobuf_older_than_the_stubs_need_is_one_line_naming_the_extra() -> None:
    for older in (
        "import grpc; grpc.__version__ = '1.70.0'",  # the grpcio stub's own check reads it
        "from google.protobuf import runtime_version as r; r.MAJOR = 5",  # as protobuf 5 reports
    ):
        code = f"{older}\nfrom kinodb._cli import main\nraise SystemExit(main.main(['serve', 'x.kdb']))\n"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert run.returncode == 1
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert "needs grpcio>=1.85.1 and protobuf>=7.35.1,<8" in lines[0]
        assert lines[0].endswith("pip install -U 'kinodb[serve]'")
