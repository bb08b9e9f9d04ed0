"""Clients of the earlier server: its .proto (package ``kinodb``) against the new server."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest

import kinodb
from _server_proc import ServerProcess
from kinodb.serve._proto import kinodb_pb2 as v1

# The earlier server's service definition, as its clients were generated from.
EARLIER_PROTO = """
syntax = "proto3";
package kinodb;
service KinoService {
  rpc GetEpisode(EpisodeRequest) returns (EpisodeResponse);
  rpc GetMeta(MetaRequest) returns (MetaResponse);
  rpc GetBatch(BatchRequest) returns (BatchResponse);
  rpc Query(QueryRequest) returns (QueryResponse);
  rpc ServerInfo(InfoRequest) returns (InfoResponse);
}
message EpisodeRequest { uint64 position = 1; }
message MetaRequest { uint64 position = 1; }
message BatchRequest {
  uint32 batch_size = 1; string mode = 2; uint64 offset = 3; uint64 seed = 4; bool include_images = 5;
}
message QueryRequest { string kql = 1; uint32 limit = 2; }
message InfoRequest {}
message EpisodeMeta {
  uint64 episode_id = 1; string embodiment = 2; string task = 3; uint32 num_frames = 4; float fps = 5;
  uint32 action_dim = 6; bool has_success = 7; bool success = 8; bool has_reward = 9; float total_reward = 10;
}
message Frame {
  uint32 timestep = 1; repeated float state = 2; repeated float action = 3; float reward = 4;
  bool is_terminal = 5; repeated ImageObs images = 6;
}
message ImageObs { string camera = 1; uint32 width = 2; uint32 height = 3; uint32 channels = 4; bytes data = 5; }
message Episode { EpisodeMeta meta = 1; repeated Frame frames = 2; }
message EpisodeResponse { Episode episode = 1; }
message MetaResponse { EpisodeMeta meta = 1; }
message BatchResponse { repeated Episode episodes = 1; }
message QueryResponse { repeated uint64 positions = 1; repeated EpisodeMeta metas = 2; uint64 total_matches = 3; }
message InfoResponse {
  uint64 num_episodes = 1; uint64 num_frames = 2; uint32 num_sources = 3; string version = 4; repeated string sources = 5;
}
"""


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """The earlier client's generated modules, made here with grpc_tools."""
    from grpc_tools import protoc

    root = tmp_path_factory.mktemp("earlier")
    (root / "kinodb.proto").write_text(EARLIER_PROTO)
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={root}", f"--grpc_python_out={root}",
                        str(root / "kinodb.proto")]) == 0  # fmt: skip
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("kinodb_pb2"), importlib.import_module("kinodb_pb2_grpc")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("kinodb_pb2", None)
        sys.modules.pop("kinodb_pb2_grpc", None)


def test_field_numbers_and_types_are_kept(earlier: tuple[ModuleType, ModuleType]) -> None:
    old = earlier[0].DESCRIPTOR
    for name, message in old.message_types_by_name.items():
        new = v1.DESCRIPTOR.message_types_by_name[name]
        for field in message.fields:
            kept = new.fields_by_number[field.number]
            assert (kept.name, kept.type, kept.is_repeated) == (field.name, field.type, field.is_repeated), (
                name,
                field.name,
            )
    old_service = old.services_by_name["KinoService"]
    new_service = v1.DESCRIPTOR.services_by_name["KinoService"]
    assert {m.name for m in old_service.methods} < {m.name for m in new_service.methods}


def test_earlier_client_reads_episodes(earlier: tuple[ModuleType, ModuleType], server: ServerProcess,
                                       main_kdb: Path) -> None:  # fmt: skip
    pb, pb_grpc = earlier
    with grpc.insecure_channel(server.addr) as channel, kinodb.open(main_kdb) as db:
        stub = pb_grpc.KinoServiceStub(channel)
        info = stub.ServerInfo(pb.InfoRequest(), timeout=10)
        assert (info.num_episodes, info.num_frames, info.num_sources) == (20, db.num_frames(), 1)
        ep = stub.GetEpisode(pb.EpisodeRequest(position=3), timeout=10).episode
        local = db.read_episode(3)
        assert ep.meta.task == local["meta"]["task"] and ep.meta.num_frames == len(ep.frames)
        assert ep.meta.has_success == (local["meta"]["success"] is not None)
        np.testing.assert_array_equal([list(f.state) for f in ep.frames], local["states"])
        np.testing.assert_array_equal([list(f.action) for f in ep.frames], local["actions"])
        np.testing.assert_array_equal([f.reward for f in ep.frames], local["rewards"])
        assert [f.is_terminal for f in ep.frames] == local["is_terminal"].tolist()
        first = ep.frames[0].images  # always decoded raw pixels, as the earlier server sent them
        assert [(im.camera, im.height, im.width, im.channels) for im in first] == [
            ("cam", 16, 16, 3),
            ("wrist", 8, 8, 3),
        ]
        assert first[0].data == local["images"]["cam"][0].tobytes()
        batch = stub.GetBatch(pb.BatchRequest(batch_size=3, mode="sequential", offset=19), timeout=10)
        assert [e.meta.episode_id for e in batch.episodes] == [19, 0, 1]
        assert all(not f.images for e in batch.episodes for f in e.frames)
        hits = stub.Query(pb.QueryRequest(kql="success = true", limit=2), timeout=10)
        assert list(hits.positions) == db.query("success = true")[:2].tolist()
        assert [m.episode_id for m in hits.metas] == list(hits.positions)
        assert hits.total_matches == len(db.query("success = true"))
        assert (
            stub.GetMeta(pb.MetaRequest(position=5), timeout=10).meta.num_frames
            == db.read_meta(5)["num_frames"]
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEpisode(pb.EpisodeRequest(position=20), timeout=10)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
