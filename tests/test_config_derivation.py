"""Config fields derived from others (hybridlm.config_defaults.model_config) follow command-line overrides of those;
an override of a derived field itself wins; and the resolved values are the ones config.json records and the model
is built with."""

import json

import pytest
from absl import flags
from ml_collections import config_flags

import experiments
from hybridlm import checkpoint
from hybridlm.model import ModelConfig, abstract_params


def _overridden(name: str, *overrides: str):
    """Experiment `name`'s config with `--config.<key>=<value>` overrides applied as the command line applies them,
    in the order given."""
    argv = ["test", f"--config={experiments.path(name)}", *(f"--config.{override}" for override in overrides)]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "the experiment", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def _value(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


# olmo_hybrid_7b: d_model 3840, 30 heads, every other shape field derived from those.
FOLLOWS = [
    (["model.num_heads=16"], "model.num_kv_heads", 16),
    (["model.num_heads=16"], "model.head_dim", 240),
    (["model.d_model=256"], "model.head_dim", None),  # 256 / 30 is not whole: ModelConfig.from_config says so
    (["model.d_model=1920"], "model.head_dim", 64),
    (["model.num_heads=16"], "model.gdn.num_key_heads", 16),
    (["model.num_heads=16"], "model.gdn.num_value_heads", 16),
    (["model.gdn.num_key_heads=8"], "model.gdn.num_value_heads", 8),
    (["model.d_model=256", "model.num_heads=16"], "model.gdn.key_head_dim", 12),  # 3/4 x 256 / 16
    (["model.gdn.num_key_heads=8"], "model.gdn.key_head_dim", 360),  # 3/4 x 3840 / 8
    (["model.d_model=256", "model.num_heads=16"], "model.gdn.value_head_dim", 24),
    (["model.gdn.key_head_dim=64"], "model.gdn.value_head_dim", 128),
]

# An override of the derived field wins whether it comes before or after an override of what it derives from.
WINS = [
    (["model.num_kv_heads=5", "model.num_heads=10"], "model.num_kv_heads", 5),
    (["model.num_heads=10", "model.num_kv_heads=5"], "model.num_kv_heads", 5),
    (["model.head_dim=64", "model.num_heads=16"], "model.head_dim", 64),
    (["model.gdn.num_key_heads=8", "model.num_heads=16"], "model.gdn.num_key_heads", 8),
    (["model.gdn.num_value_heads=60", "model.gdn.num_key_heads=15"], "model.gdn.num_value_heads", 60),
    (["model.gdn.key_head_dim=64", "model.d_model=256"], "model.gdn.key_head_dim", 64),
    (["model.gdn.value_head_dim=100", "model.gdn.key_head_dim=64"], "model.gdn.value_head_dim", 100),
    # ... and leaves what it was derived from as it was.
    (["model.num_kv_heads=5"], "model.num_heads", 30),
    (["model.gdn.num_key_heads=8"], "model.num_heads", 30),
    (["model.gdn.num_value_heads=60"], "model.gdn.num_key_heads", 30),
]


@pytest.mark.parametrize("overrides, key, expected", FOLLOWS + WINS)
def test_derived_fields_after_overrides(overrides, key, expected):
    assert _value(_overridden("olmo_hybrid_7b", *overrides), key) == expected


def test_tiny_keeps_its_gdn_key_head_width_while_the_heads_follow():
    """tiny_hybrid sets its GDN key heads 32 wide: more heads keep that width, and the value heads follow."""
    config = _overridden("tiny_hybrid", "model.num_heads=8").model
    assert (config.head_dim, config.gdn.num_key_heads, config.gdn.num_value_heads) == (16, 8, 8)
    assert (config.gdn.key_head_dim, config.gdn.value_head_dim) == (32, 64)


def test_the_smaller_model_of_the_overrides_is_built_and_recorded(tmp_path):
    """The 7B hybrid at 16 heads, 4 layers, width 256 builds with the shapes derived from those, and config.json
    records them."""
    config = _overridden("olmo_hybrid_7b", "model.num_heads=16", "model.num_layers=4", "model.d_model=256")
    params = abstract_params(ModelConfig.from_config(config.model))["groups"]["blocks"]
    attention, gdn = params[3]["attention"], params[0]["gdn"]
    assert attention["q_proj"]["kernel"].shape == (1, 256, 16 * 16)
    assert attention["k_proj"]["kernel"].shape == (1, 256, 16 * 16)  # 16 KV heads of 16
    assert gdn["k_proj"]["kernel"].shape == (1, 256, 16 * 12)  # 16 key heads of 3/4 x 256 / 16
    assert gdn["v_proj"]["kernel"].shape == (1, 256, 16 * 24)
    checkpoint.record_config(tmp_path, config)
    recorded = json.loads((tmp_path / "config.json").read_text())["model"]
    assert (recorded["num_kv_heads"], recorded["head_dim"]) == (16, 16)
    assert {k: recorded["gdn"][k] for k in ("num_key_heads", "num_value_heads", "key_head_dim", "value_head_dim")} == {
        "num_key_heads": 16,
        "num_value_heads": 16,
        "key_head_dim": 12,
        "value_head_dim": 24,
    }
