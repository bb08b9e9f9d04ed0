"""A robomimic file as robomimic's own pipeline writes it (robosuite's
gather_demonstrations_as_hdf5, then convert_robosuite.py, dataset_states_to_obs.py and
split_train_val.py), written with h5py: what the HDF5 ingest and export tests of that
pipeline share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

DEMOS = 6  # fewer than 10: robomimic's split_train_val leaves mask/valid empty
# env_args as convert_robosuite.py writes them: a robosuite env (type 1), no control_freq.
ENV_ARGS = {
    "env_name": "Lift",
    "env_version": "1.4.1",
    "type": 1,
    "env_kwargs": {
        "robots": "Panda",
        "controller_configs": {"type": "OSC_POSE", "input_max": 1, "input_min": -1, "kp": 150},
        "reward_shaping": False,
        "has_renderer": False,
        "has_offscreen_renderer": True,
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": True,
        "camera_depths": False,
    },
}


def model_xml(k: int) -> str:
    """MJCF XML as robosuite writes it into a demo's ``model_file``, the cube placed per demo."""
    links = "\n".join(
        f'      <body name="robot0_link{j}" pos="0 0 {0.333 * (j > 0):.3f}">\n'
        f'        <joint name="robot0_joint{j}" pos="0 0 0" axis="0 0 1" range="-2.8973 2.8973"/>\n'
        f'        <geom type="mesh" mesh="robot0_link{j}_vis" contype="0" conaffinity="0" group="1"/>\n'
        "      </body>"
        for j in range(8)
    )
    return (
        '<mujoco model="base">\n'
        '  <compiler angle="radian" meshdir="meshes/" autolimits="true"/>\n'
        '  <option impratio="20" density="1.2" viscosity="2e-05" cone="elliptic"/>\n'
        '  <size njmax="5000" nconmax="5000"/>\n'
        "  <worldbody>\n"
        '    <body name="robot0_base" pos="-0.56 0 0.912">\n'
        f"{links}\n"
        "    </body>\n"
        f'    <body name="cube_main" pos="{0.01 * k:.3f} {-0.02 * k:.3f} 0.82">\n'
        '      <joint name="cube_joint0" type="free"/>\n'
        '      <geom name="cube_g0" size="0.0208 0.0208 0.0208" type="box" rgba="1 0 0 1"/>\n'
        "    </body>\n"
        "  </worldbody>\n"
        "</mujoco>\n"
    )


def write_robomimic_pipeline(
    path: Path,
    *,
    env_args: dict[str, Any] | None = None,
    compress: bool = False,
    masks: dict[str, list[int]] | None = None,
) -> Path:
    """A low-dim and image file as dataset_states_to_obs.py writes it after convert_robosuite.py
    (demos numbered from 1, model_file on each, mask/train of every demo and an empty
    mask/valid); ``compress``: obs and next_obs gzip-compressed, as its ``--compress`` does;
    ``masks``: more filter keys, by demo number."""  # fmt: skip
    rng = np.random.default_rng(7)
    gzip: dict[str, Any] = {"compression": "gzip"} if compress else {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS if env_args is None else env_args, indent=4)
        total = 0
        for k in range(1, DEMOS + 1):
            T = 5 + k
            total += T
            g = data.create_group(f"demo_{k}")
            g.attrs["model_file"] = model_xml(k)
            g.attrs["num_samples"] = np.int64(T)
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["states"] = rng.normal(size=(T, 32))
            g["rewards"] = np.r_[np.zeros(T - 1), 1.0]
            g["dones"] = np.r_[np.zeros(T - 1, np.int64), 1]
            obs = {
                "robot0_eef_pos": rng.normal(size=(T + 1, 3)),
                "object": rng.normal(size=(T + 1, 10)),
                "agentview_image": rng.integers(0, 256, (T + 1, 8, 8, 3), dtype=np.uint8),
            }
            for key, values in obs.items():
                g.create_dataset(f"obs/{key}", data=values[:-1], **gzip)
                g.create_dataset(f"next_obs/{key}", data=values[1:], **gzip)
        data.attrs["total"] = total
        f["mask/train"] = np.array([f"demo_{k}".encode() for k in range(1, DEMOS + 1)])
        f["mask/valid"] = np.array([], dtype="S")
        for name, demos in (masks or {}).items():
            f[f"mask/{name}"] = np.array([f"demo_{k}".encode() for k in demos])
    return path
