#!/usr/bin/env bash
# The built-in example: create datasets, inspect, validate, query, merge, mix, export and
# re-ingest, ingest a zarr replay buffer and export it back, export to RLDS and back, and real RLDS/LeRobot data when the samples are
# present, read from Python, compute statistics, benchmark, then the end-to-end loop from
# recording to deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
DEMO=${KINODB_DEMO:-demo}  # where the demo writes its files
mkdir -p "$DEMO"
run() {
  local shown='$' arg
  for arg in "$@"; do
    if [[ $arg == *[[:space:]\'\(]* ]]; then shown+=" \"$arg\""; else shown+=" $arg"; fi
  done
  printf '\n%s\n' "$shown"
  "$@"
}
run "$BIN/kino" create-test "$DEMO"/demo.kdb -n 200 --frames 50 --images --compress 90 --seed 7 --force
run "$BIN/kino" create-test "$DEMO"/extra.kdb -n 80 --frames 30 --seed 8 --force
run "$BIN/kino" info "$DEMO"/demo.kdb
run "$BIN/kino" schema "$DEMO"/demo.kdb
run "$BIN/kino" validate "$DEMO"/demo.kdb
run "$BIN/kino" query "$DEMO"/demo.kdb "success = true AND embodiment IN (franka, widowx) AND NOT scene = 'lab'" --limit 5
run "$BIN/kino" merge "$DEMO"/demo.kdb "$DEMO"/extra.kdb -o "$DEMO"/train.kdb --filter "split = 'train' AND success = true" --force
run "$BIN/kino" validate "$DEMO"/train.kdb
run "$BIN/kino" mix --source "$DEMO"/demo.kdb:3 --source "$DEMO"/extra.kdb:1 --sample 1000
run "$BIN/kino" export "$DEMO"/train.kdb -o "$DEMO"/train_npy --format numpy --filter "embodiment = 'franka'" --force
run "$BIN/kino" ingest "$DEMO"/train_npy -o "$DEMO"/franka_from_npy.kdb --force -q --verify
run "$BIN/kino" export "$DEMO"/demo.kdb -o "$DEMO"/franka_lerobot --format lerobot --filter "embodiment = 'franka' AND success = true" --force
run "$BIN/kino" ingest "$DEMO"/franka_lerobot -o "$DEMO"/franka_from_lerobot.kdb --force -q
run "$BIN/kino" verify "$DEMO"/franka_lerobot "$DEMO"/franka_from_lerobot.kdb --psnr 30
run "$BIN/kino" export "$DEMO"/train.kdb -o "$DEMO"/train.hdf5 --format hdf5 --force
run "$BIN/kino" ingest "$DEMO"/train.hdf5 -o "$DEMO"/train_again.kdb --force -q
# A diffusion_policy replay buffer (zarr): Push-T's layout, frames kept lossless
run "$BIN/python" examples/pusht_zarr.py "$DEMO"/pusht.zarr
run "$BIN/kino" ingest "$DEMO"/pusht.zarr -o "$DEMO"/pusht.kdb --embodiment pusht --task "push the T into place" --fps 10 --image-codec png --force -q --verify
# ... and back out as one (a zip archive, as UMI ships them), which ingests to the same file
run "$BIN/kino" export "$DEMO"/pusht.kdb -o "$DEMO"/pusht_again.zarr.zip --force
run "$BIN/kino" ingest "$DEMO"/pusht_again.zarr.zip -o "$DEMO"/pusht_again.kdb --image-codec png --force -q --verify
# An RLDS dataset in TFDS's folder layout (tfds.load("franka", data_dir="demo/rlds") reads it), ingested back
run "$BIN/kino" export "$DEMO"/demo.kdb -o "$DEMO"/rlds/franka/1.0.0 --format rlds --filter "embodiment = 'franka' AND success = true" --force
run "$BIN/kino" ingest "$DEMO"/rlds/franka/1.0.0 -o "$DEMO"/franka_from_rlds.kdb --force -q --verify
SAMPLE=../shared/samples/octo_bridge_rlds/bridge_dataset/1.0.0
if [ -d "$SAMPLE" ]; then
  run "$BIN/kino" ingest "$SAMPLE" -o "$DEMO"/bridge.kdb --force -q
  run "$BIN/kino" query "$DEMO"/bridge.kdb "task CONTAINS 'carrot'" --limit 3
fi
G1=../shared/samples/unitree_g1_lerobot_v21
if [ -d "$G1" ]; then
  run "$BIN/kino" ingest "$G1" --episodes 29 -o "$DEMO"/g1.kdb --force -q --verify
  run "$BIN/kino" info "$DEMO"/g1.kdb
  if [ -f "$DEMO"/bridge.kdb ]; then
    # Two robots, one policy: a 1:1 mixture of a WidowX (7-d actions) and a Unitree G1
    # (26-d), their cameras under one name, padded actions with masks
    run "$BIN/python" examples/cross_robot.py "$DEMO"/bridge.kdb image_0 "$DEMO"/g1.kdb cam_high --steps 4
  fi
else
  echo; echo "(skipping the real-data ingests: ../shared/samples is not next to this checkout)"
fi
run "$BIN/python" examples/read_episode.py "$DEMO"/demo.kdb
run "$BIN/kino" stats "$DEMO"/train.kdb --arrays actions
run "$BIN/kino" bench -n 200 --frames 30
# Serve a file over gRPC and read it as a remote training worker would
run "$BIN/python" examples/serve_and_read.py "$DEMO"/train.kdb
# The whole loop: record -> ingest -> query -> mix -> train -> export -> run -> record
run "$BIN/python" examples/end_to_end.py "$DEMO"/e2e
run "$BIN/kino" infer inspect "$DEMO"/e2e/reach.kinfer
run "$BIN/kino" infer replay "$DEMO"/e2e/reach.kinfer "$DEMO"/e2e/reach_robomimic.kdb --episodes 0-2 \
  --state-map joint_angles=states.robot0_joint_pos --state-map joint_angular_velocities=states.robot0_joint_vel
