"""The device mesh and the layout of the train state on it: the same losses on every mesh, parameters and optimizer
state split by the rules, checkpoints that restore onto other meshes, and one-line errors for meshes that cannot
work. Multi-device runs go through tests/mesh_runs.py in processes with 8 CPU devices."""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from conftest import small_config
from hybridlm import partitioning, config_checks
from hybridlm.api import load_workdir
from hybridlm.model.config import ConfigError

HERE = pathlib.Path(__file__).parent
MESHES = [
    {"data": 8},
    {"data": 1, "fsdp": 8},
    {"data": 1, "fsdp": 4, "tensor": 2},
    {"data": 2, "fsdp": 2, "tensor": 2},
]


def _mesh_run(devices: int, mode: str, config, *args: object) -> object:
    command = [sys.executable, str(HERE / "mesh_runs.py"), str(devices), mode, config.to_json_best_effort()]
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _eight_device_config(layer_pattern=("gdn", "attn")):
    config = small_config(layer_pattern)
    config.data.batch_size = 8
    return config


def _runs_on_every_mesh(config, steps: int) -> dict[str, dict]:
    """{mesh json: {"losses": [...], "shards": ...}} on MESHES (8 devices) and, under "one device", on 1."""
    found = _mesh_run(8, "losses", config, json.dumps(MESHES), steps)
    (found["one device"],) = _mesh_run(1, "losses", config, json.dumps([{"data": 1}]), steps).values()
    return found


def _assert_same_losses(runs: dict[str, dict], steps: int) -> None:
    single = runs["one device"]["losses"]
    assert len(runs) == len(MESHES) + 1 and all(len(run["losses"]) == steps for run in runs.values())
    for mesh, run in runs.items():
        assert run["losses"] == pytest.approx(single, rel=1e-5), mesh


@pytest.fixture(scope="module")
def small_hybrid_runs() -> dict[str, dict]:
    return _runs_on_every_mesh(_eight_device_config(), steps=5)


def test_every_mesh_gives_the_losses_of_one_device(small_hybrid_runs):
    """5 steps of the small hybrid (documents masked, so the kernels' shard_map carries segment ids) on data=8,
    fsdp=8, fsdp=4 x tensor=2 and data=2 x fsdp=2 x tensor=2 match one device within 1e-5 relative."""
    _assert_same_losses(small_hybrid_runs, steps=5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_hybrid", "tiny_transformer"])
def test_tiny_experiments_give_the_same_losses_on_every_mesh(name):
    import experiments

    config = experiments.get_config(name)
    config.data.seq_len = 128
    _assert_same_losses(_runs_on_every_mesh(config, steps=5), steps=5)


def test_parameters_and_optimizer_state_are_split_by_the_rules(small_hybrid_runs):
    """On fsdp=4 x tensor=2 each device holds its shard of every parameter and of both AdamW moments: d_model split 4
    ways, heads, GDN heads, MLP width and vocabulary 2 ways, norms and the stacked-layer axis whole."""
    found = small_hybrid_runs[json.dumps({"data": 1, "fsdp": 4, "tensor": 2})]["shards"]
    fsdp, tensor = 4, 2
    divisors = {  # the last two path components -> the divisor of each axis (after the stacked-layer axis)
        "embed/embedding": (tensor, fsdp),
        "lm_head/kernel": (fsdp, tensor),
        "final_norm/weight": (1,),
        "q_proj/kernel": (fsdp, tensor),
        "k_proj/kernel": (fsdp, tensor),
        "v_proj/kernel": (fsdp, tensor),
        "o_proj/kernel": (tensor, fsdp),
        "gate_proj/kernel": (fsdp, tensor),
        "up_proj/kernel": (fsdp, tensor),
        "down_proj/kernel": (tensor, fsdp),
        "a_proj/kernel": (fsdp, tensor),
        "b_proj/kernel": (fsdp, tensor),
        "g_proj/kernel": (fsdp, tensor),
        "q_conv/weight": (1, tensor),
        "k_conv/weight": (1, tensor),
        "v_conv/weight": (1, tensor),
        "gdn/A_log": (tensor,),
        "gdn/dt_bias": (tensor,),
        "gdn/o_norm": (1,),
        "q_norm/weight": (tensor,),
        "k_norm/weight": (tensor,),
    }
    params = found["params"]
    for path, (shape, shard) in params.items():
        key = "/".join(path.split("/")[-2:])
        if key.endswith("norm/weight") and key not in divisors:
            key = "final_norm/weight"  # the blocks' norms over d_model are whole, like the final norm
        expected = divisors[key]
        stacked = path.startswith("groups/")
        assert shape[stacked:] and len(expected) == len(shape) - stacked, path
        assert shard == shape[:stacked] + [dim // d for dim, d in zip(shape[stacked:], expected)], path
    split = [path for path, (shape, shard) in params.items() if math.prod(shard) < math.prod(shape)]
    assert len(split) >= 0.8 * len(params)
    moments = {path: shapes for path, shapes in found["opt_state"].items() if shapes[0]}  # not the step counters
    for param_path, shapes in params.items():
        copies = [p for p in moments if p.endswith("/" + param_path)]
        assert len(copies) == 2 and all(moments[p] == shapes for p in copies), param_path  # AdamW's mu and nu


def _name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_a_checkpoint_restores_onto_other_meshes_and_one_device(tmp_path):
    """Saved on fsdp=8 at step 3: read back as numpy for export, and restored onto data=2 x fsdp=2 x tensor=2 and onto
    one device, the parameters are bitwise those saved, and training on from there gives the uninterrupted run's
    losses at steps 4 and 5."""
    config = _eight_device_config()
    config.train.update(num_steps=5, checkpoint_every=3, eval_every=100, keep_checkpoints=5)
    saved = tmp_path / "fsdp8"
    saved_digests = _mesh_run(8, "train", config, json.dumps({"data": 1, "fsdp": 8}), saved, 3)
    reference = _losses(saved)
    exported = load_workdir(saved, step=3).params  # what export_hf and load_model read: numpy on the host
    flat = jax.tree_util.tree_leaves_with_path(exported)
    assert {_name(path): hashlib.sha1(x.tobytes()).hexdigest() for path, x in flat} == saved_digests
    for devices, mesh in [(8, {"data": 2, "fsdp": 2, "tensor": 2}), (1, {"data": 1})]:
        resumed = tmp_path / f"resumed_on_{devices}"
        shutil.copytree(saved, resumed)
        shutil.rmtree(resumed / "checkpoints" / "5")
        (resumed / "metrics.jsonl").unlink()
        assert _mesh_run(devices, "train", config, json.dumps(mesh), resumed, 3) == saved_digests
        losses = _losses(resumed)
        assert sorted(losses) == [4, 5]
        assert [losses[4], losses[5]] == pytest.approx([reference[4], reference[5]], rel=1e-6, abs=0)


def _checked(config, devices: int = 8, monkeypatch=None) -> str:
    monkeypatch.setattr(config_checks.jax, "device_count", lambda: devices)
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
    return str(error.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mesh.data": 3}, "config.mesh (slices=1 x data=3 x fsdp=1 x tensor=1): the axis sizes multiply to 3 but "
                           "there are 8 devices"),
        ({"mesh.data": -1, "mesh.fsdp": -1}, "at most one -1"),
        ({"mesh.data": 2, "mesh.tensor": 4}, "config.model.num_kv_heads=2 does not split over config.mesh.tensor=4"),
        ({"mesh.data": 4, "mesh.tensor": 2, "model.mlp_hidden": 63},
         "config.model.mlp_hidden=63 does not split over config.mesh.tensor=2"),
        ({"mesh.data": 2, "mesh.tensor": 4, "model.layer_pattern": ("gdn",), "model.num_layers": 1},
         "config.model.gdn.num_key_heads=2 does not split over config.mesh.tensor=4"),
        ({"mesh.data": 8}, "config.data.batch_size=4 does not split over config.mesh.slices=1 x config.mesh.data=8 x "
                           "config.mesh.fsdp=1"),
        ({"mesh.rules.embed": ("model",)}, "config.mesh.rules.embed=('model',) names the mesh axis 'model'"),
    ],
)
def test_meshes_that_cannot_work_are_refused_with_the_field_to_change(change, message, monkeypatch):
    config = small_config()
    for key, value in change.items():
        section, _, field = key.rpartition(".")
        node = config
        for part in section.split("."):
            node = node[part]
        node[field] = value
    assert message in _checked(config, monkeypatch=monkeypatch)


def test_a_rule_for_an_unknown_logical_axis_is_refused(monkeypatch):
    config = small_config()
    config.mesh.rules.heads_typo = ("tensor",)
    assert "config.mesh.rules.heads_typo: no parameter or activation has the logical axis" in _checked(
        config, monkeypatch=monkeypatch
    )


def test_the_cli_refuses_a_mesh_for_other_devices_in_one_line(tmp_path):
    command = [sys.executable, "-m", "hybridlm.train", "--config=tiny_hybrid", f"--workdir={tmp_path}",
               "--config.mesh.data=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config.mesh (slices=1 x data=2 x fsdp=1 x tensor=1): the axis sizes multiply to 2 but there are "
        f"{jax.device_count()} devices; make the product {jax.device_count()}, or set one axis to -1"
    ]


def test_mesh_specs_follow_the_rules():
    rules = partitioning.rules_from_config({"embed": ("fsdp", "tensor")})
    assert partitioning.mesh_spec(("layers", "embed", "mlp"), rules) == jax.sharding.PartitionSpec(
        None, ("fsdp", "tensor"), "tensor"
    )
    assert partitioning.mesh_spec(("batch", None), rules) == jax.sharding.PartitionSpec(("slices", "data", "fsdp"), None)
