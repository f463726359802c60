"""Hugging Face interoperability: export to and import from transformers' olmo_hybrid / olmo3, checked on logits."""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from absl.testing import flagsaver

from conftest import cli_flags, import_hf_extra, load_tool, small_config

torch, transformers = import_hf_extra()  # fails here without the hf extra (HYBRIDLM_SKIP_HF=1: skips; conftest)

import experiments  # noqa: E402
from hybridlm import api, checkpoint, generate  # noqa: E402
from hybridlm.hf import HFFormatError, convert, load  # noqa: E402
from hybridlm.hf.export import export_params, export_workdir  # noqa: E402
from hybridlm.model import ModelConfig, abstract_params  # noqa: E402
from hybridlm.optim import make_optimizer  # noqa: E402

SEQ_LEN = 70  # longer than the sliding window (8), our GDN chunk (16) and transformers' (64)
MAX_REL_ERR = 1e-4
TOKENS = convert.SpecialTokens(bos=None, eos=256, pad=257)

EXPORT_CASES = {
    # Two groups of (gdn, attn): GQA 4/2, head dim 12, GDN key/value heads 2/4 with head dims 24/40, RoPE.
    "hybrid_rope_gqa": (
        ("gdn", "attn"),
        dict(num_layers=4, d_model=48, num_heads=4, num_kv_heads=2, head_dim=12, rope_theta=10_000.0),
        dict(num_key_heads=2, num_value_heads=4, key_head_dim=24, value_head_dim=40, chunk_size=16),
    ),
    # No RoPE, head dim 16 != d_model / num_heads, conv kernel 3, beta in [0, 1]; written in several shards.
    "hybrid_nope_sharded": (
        ("gdn", "gdn", "attn"),
        dict(num_layers=3, num_heads=4, num_kv_heads=4, head_dim=16, use_rope=False),
        dict(
            num_key_heads=2,
            num_value_heads=2,
            key_head_dim=16,
            value_head_dim=24,
            conv_kernel=3,
            allow_neg_eigval=False,
            chunk_size=16,
        ),
    ),
    # Olmo 3: two sliding-window layers (window 8) and a full-attention one, GQA 4/1.
    "olmo3_sliding": (("swa", "swa", "attn"), dict(num_layers=3, num_heads=4, num_kv_heads=1, sliding_window=8), {}),
}


@dataclasses.dataclass(frozen=True)
class Export:
    workdir: pathlib.Path
    hf_dir: pathlib.Path
    config: ModelConfig


def _run_config(pattern, model_fields, gdn_fields):
    config = small_config(pattern)
    config.model.update(model_fields)
    config.model.gdn.update(gdn_fields)
    return config


def _random_params(config: ModelConfig, seed: int) -> dict:
    """Random weights everywhere, norms and GDN gates far from their init, so a swapped tensor shows in the logits."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            value = 1.0 + 0.3 * rng.standard_normal(x.shape)
        elif "A_log" in name:
            value = rng.uniform(-1.0, 2.0, x.shape)
        elif "dt_bias" in name:
            value = rng.uniform(-3.0, 0.5, x.shape)
        elif "conv" in name:
            value = rng.uniform(-0.6, 0.6, x.shape)
        else:
            value = 0.1 * rng.standard_normal(x.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract_params(config))


def _save_workdir(workdir: pathlib.Path, run_config, params_by_step: dict) -> None:
    """A workdir as the trainer leaves it: config.json and orbax checkpoints of {step, params, opt_state}."""
    workdir.mkdir(parents=True)
    checkpoint.record_config(workdir, run_config)
    optimizer = make_optimizer(run_config.optim, run_config.train.num_steps)
    checkpointer = checkpoint.Checkpointer(workdir, keep=5)
    for step, params in params_by_step.items():
        state = {"step": np.int32(step), "params": params, "opt_state": optimizer.init(params)}
        checkpointer.save(step, state, {"iterator": {"next_index": step}})
    checkpointer.close()


def _export(root: pathlib.Path, name: str, **export_kwargs) -> Export:
    run_config = _run_config(*EXPORT_CASES[name])
    config = ModelConfig.from_config(run_config.model)
    _save_workdir(root / "workdir", run_config, {5: _random_params(config, seed=len(name))})
    hf_dir = export_workdir(root / "workdir", root / "hf", dtype="float32", **export_kwargs)
    return Export(root / "workdir", hf_dir, config)


def _tokens(vocab_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (2, SEQ_LEN), dtype=np.int32)


def _hf_logits(hf_dir: pathlib.Path, tokens: np.ndarray) -> np.ndarray:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def _rel_err(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def _tensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v for f in sorted(hf_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def _rewrite_weights(hf_dir: pathlib.Path, edit) -> None:
    """Applies `edit` to the tensor dict of a single-file export and writes it back."""
    from safetensors.numpy import save_file

    tensors = _tensors(hf_dir)
    edit(tensors)
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> Export:
    return _export(tmp_path_factory.mktemp("hybrid"), "hybrid_rope_gqa")


@pytest.fixture
def hybrid_copy(hybrid, tmp_path) -> pathlib.Path:
    """A scratch copy of the hybrid export, for tests that damage it."""
    return pathlib.Path(shutil.copytree(hybrid.hf_dir, tmp_path / "hf"))


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_export_matches_transformers(name, hybrid, tmp_path):
    """Our logits (loaded from the workdir) equal transformers' on the exported directory."""
    export = hybrid if name == "hybrid_rope_gqa" else _export(tmp_path, name, max_shard_bytes=30_000)
    hf_config = json.loads((export.hf_dir / "config.json").read_text())
    assert hf_config["model_type"] == ("olmo3" if name.startswith("olmo3") else "olmo_hybrid")
    if name == "hybrid_nope_sharded":
        assert hf_config["rope_parameters"]["rope_theta"] is None
        assert len(list(export.hf_dir.glob("model-*-of-*.safetensors"))) > 2
        assert (export.hf_dir / "model.safetensors.index.json").is_file()
    tokens = _tokens(export.config.vocab_size)
    ours = api.load_model(export.workdir).logits(tokens)
    assert ours.dtype == np.float32 and ours.shape == (2, SEQ_LEN, export.config.vocab_size)
    assert _rel_err(ours, _hf_logits(export.hf_dir, tokens)) <= MAX_REL_ERR


def _perturbed(model):
    """Random weights of scale 0.1; norms, A_log and dt_bias moved away from their init."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.3 * noise)
            elif name.endswith(("A_log", "dt_bias")):
                param.copy_(noise)
            else:
                param.copy_(0.1 * noise)
    return model


IMPORT_CASES = {
    # No RoPE; GDN key/value head dims 24/40, so save_pretrained's equal three-way conv split is not q/k/v.
    "olmo_hybrid_nope": lambda: transformers.OlmoHybridConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["linear_attention", "full_attention"] * 2,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=24,
        linear_value_head_dim=40,
        pad_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": None},
    ),
    "olmo3_sliding": lambda: transformers.Olmo3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        pad_token_id=1,
        eos_token_id=2,
    ),
}


@pytest.mark.parametrize("name", IMPORT_CASES)
def test_import_matches_transformers(name, tmp_path):
    """A random transformers model saved with save_pretrained gives the same logits here."""
    torch.manual_seed(0)
    model = _perturbed(transformers.AutoModelForCausalLM.from_config(IMPORT_CASES[name]())).eval()
    model.save_pretrained(tmp_path)
    tokens = _tokens(300, seed=1)
    with torch.no_grad():
        reference = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    loaded = api.load_model(tmp_path)
    assert _rel_err(loaded.logits(tokens), reference) <= MAX_REL_ERR


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_import_export_is_exact(hybrid, dtype, tmp_path):
    """Export -> import -> export reproduces every tensor bit for bit, and config.json."""
    first, second = tmp_path / "first", tmp_path / "second"
    params = api.load_workdir(hybrid.workdir).params
    export_params(params, hybrid.config, first, dtype=dtype, tokens=TOKENS)
    imported = load.load_hf_params(first, load.model_config_from_hf(first))
    export_params(imported, hybrid.config, second, dtype=dtype, tokens=TOKENS)
    a, b = _tensors(first), _tensors(second)
    assert sorted(a) == sorted(b) == sorted(t.hf_name for t in convert.tensor_maps(hybrid.config))
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())


def test_import_reads_fused_conv(hybrid, hybrid_copy):
    """transformers' own layout (one conv1d.weight per GDN layer) imports to the same params."""

    def fuse(tensors):
        for layer in (0, 2):
            prefix = f"model.layers.{layer}.linear_attn."
            parts = [tensors.pop(f"{prefix}{x}_conv1d.weight") for x in "qkv"]
            tensors[f"{prefix}conv1d.weight"] = np.concatenate(parts, axis=0)

    _rewrite_weights(hybrid_copy, fuse)
    fused = load.load_hf_params(hybrid_copy, hybrid.config)
    separate = load.load_hf_params(hybrid.hf_dir, hybrid.config)
    jax.tree.map(np.testing.assert_array_equal, fused, separate)


@pytest.mark.parametrize("name", ["hybrid_rope_gqa", "olmo3_sliding"])
def test_greedy_generation_matches_transformers(name, hybrid, tmp_path):
    """64 greedy tokens from our cached generation (loaded from the workdir) equal transformers' `generate` on the
    exported directory, both stopping at the eos id."""
    export = hybrid if name == "hybrid_rope_gqa" else _export(tmp_path, name)
    prompts = _tokens(export.config.vocab_size, seed=np.random.SeedSequence().entropy % 2**31)[:, :5]
    ours = api.load_model(export.workdir).generate(prompts.tolist(), 64, stop_tokens=[TOKENS.eos])
    model = transformers.AutoModelForCausalLM.from_pretrained(export.hf_dir, attn_implementation="eager")
    inputs = torch.from_numpy(prompts.astype(np.int64))
    with torch.no_grad():  # the mask given: left to itself, generate masks every prompt token equal to the pad id
        theirs = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=64, do_sample=False, pad_token_id=TOKENS.pad
        ).numpy()[:, prompts.shape[1] :]
    for row, tokens in enumerate(ours):
        assert tokens == theirs[row, : len(tokens)].tolist(), f"{name}: row {row}"
        assert len(tokens) == 64 or tokens[-1] == TOKENS.eos, f"{name}: row {row} stopped early"


def test_generate_cli_streams_the_api_text(hybrid, tmp_path, capsys):
    """`python -m hybridlm.generate` prints what Model.generate returns for a string prompt (byte tokenizer)."""
    workdir = pathlib.Path(shutil.copytree(hybrid.workdir, tmp_path / "workdir"))
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["tokenizer"] = "byte"
    (workdir / "config.json").write_text(json.dumps(config))
    model = api.load_model(workdir)
    expected = model.generate(["ab"], 8, stop_tokens=[model.tokenizer().eos_id])[0]
    with cli_flags(generate.define_flags), flagsaver.flagsaver(model=str(workdir), prompt="ab", max_new_tokens=8):
        generate.main([])
    assert capsys.readouterr().out == expected + "\n"


def test_workdir_steps(hybrid, tmp_path):
    run_config = _run_config(*EXPORT_CASES["hybrid_rope_gqa"])
    early, late = _random_params(hybrid.config, 1), _random_params(hybrid.config, 2)
    _save_workdir(tmp_path / "run", run_config, {3: early, 7: late})
    assert api.load_workdir(tmp_path / "run").step == 7
    restored = api.load_workdir(tmp_path / "run", step=3)
    jax.tree.map(np.testing.assert_array_equal, restored.params, early)
    with pytest.raises(ValueError, match=r"no checkpoint at step 5; it has steps \[3, 7\]"):
        api.load_workdir(tmp_path / "run", step=5)


def test_cli_bf16_sharded(hybrid, tmp_path, capsys):
    cli = load_tool("export_hf")
    out = tmp_path / "hf"
    args = ["--workdir", str(hybrid.workdir), "--out", str(out), "--dtype", "bf16", "--max_shard_gb", "0.00005"]
    assert cli.main(args) == 0
    assert "bfloat16 weights (--dtype)" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {t.hf_name for t in convert.tensor_maps(hybrid.config)}
    assert {str(v.dtype) for v in _tensors(out).values()} == {"bfloat16"}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 256
    assert cli.main(args) == 2  # the directory is no longer empty
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_export_defaults_to_the_run_param_dtype(param_dtype, tmp_path, capsys):
    """Without a dtype the weights are written in the run's config.model.param_dtype, and the tool says which."""
    run_config = _run_config(*EXPORT_CASES["olmo3_sliding"])
    run_config.model.param_dtype = param_dtype
    _save_workdir(tmp_path / "run", run_config, {1: _random_params(ModelConfig.from_config(run_config.model), 0)})
    assert load_tool("export_hf").main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "cli")]) == 0
    assert f"{param_dtype} weights (the run's config.model.param_dtype" in capsys.readouterr().out
    export_workdir(tmp_path / "run", tmp_path / "api")
    for out in ("cli", "api"):
        assert {str(v.dtype) for v in _tensors(tmp_path / out).values()} == {param_dtype}


def test_export_saves_hf_tokenizer(tmp_path):
    import tokenizers  # a dependency of hybridlm itself
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "hello": 4, "world": 5}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    run_config = _run_config(*EXPORT_CASES["olmo3_sliding"])
    run_config.data.tokenizer = str(tmp_path / "tokenizer")
    config = ModelConfig.from_config(run_config.model)
    _save_workdir(tmp_path / "run", run_config, {1: _random_params(config, 0)})
    out = export_workdir(tmp_path / "run", tmp_path / "hf")
    hf_config = json.loads((out / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"], hf_config["pad_token_id"]) == (1, 2, 0)
    assert transformers.AutoTokenizer.from_pretrained(out)("hello world")["input_ids"] == [4, 5]


@pytest.mark.parametrize("name", ["olmo_hybrid_7b", "olmo3_7b"])
def test_7b_names_and_shapes_match_transformers(name):
    """Every tensor of a 7B export has the name and shape transformers' model has (q/k/v convs fused, as it loads
    them), checked on a model built on the meta device."""
    config = ModelConfig.from_config(experiments.get_config(name).model)
    hf_config = convert.to_hf_config(config, dtype="bfloat16", tokens=TOKENS)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_config))
    abstract = abstract_params(config)
    ours = {}
    for tensor in convert.tensor_maps(config):
        shape = convert.leaf(abstract, tensor.path).shape
        shape = convert.hf_shape(tensor.layout, shape[1:] if tensor.group is not None else shape)
        if tensor.layout == convert.CONV:  # [width, 1, kernel] -> channels added into linear_attn.conv1d.weight
            fused = tensor.hf_name.rsplit(".", 2)[0] + ".conv1d.weight"
            shape = (ours.get(fused, (0,))[0] + shape[0], *shape[1:])
            ours[fused] = shape
        else:
            ours[tensor.hf_name] = shape
    assert ours == {k: tuple(v.shape) for k, v in model.state_dict().items()}


# Bad input: each error names the field or tensor, and the file.


def test_rejects_other_model_type(hybrid_copy):
    config = json.loads((hybrid_copy / "config.json").read_text())
    (hybrid_copy / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(HFFormatError, match=r"config\.json: model_type='llama' is not one we read"):
        api.load_model(hybrid_copy)


def test_rejects_missing_tensor(hybrid, hybrid_copy):
    _rewrite_weights(hybrid_copy, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(HFFormatError, match=r"tensor model\.layers\.1\.self_attn\.k_norm\.weight is missing"):
        load.load_hf_params(hybrid_copy, hybrid.config)


def test_rejects_missing_conv(hybrid, hybrid_copy):
    _rewrite_weights(hybrid_copy, lambda t: t.pop("model.layers.2.linear_attn.v_conv1d.weight"))
    with pytest.raises(HFFormatError, match=r"tensor model\.layers\.2\.linear_attn\.v_conv1d\.weight is missing"):
        load.load_hf_params(hybrid_copy, hybrid.config)


def test_rejects_misshaped_tensor(hybrid, hybrid_copy):
    def shrink(tensors):
        tensors["model.layers.0.linear_attn.o_norm.weight"] = np.ones(7, np.float32)

    _rewrite_weights(hybrid_copy, shrink)
    with pytest.raises(
        HFFormatError,
        match=r"model\.safetensors: tensor model\.layers\.0\.linear_attn\.o_norm\.weight "
        r"has shape \[7\], the model described by config\.json needs \[40\]",
    ):
        load.load_hf_params(hybrid_copy, hybrid.config)


def test_rejects_misshaped_conv(hybrid, hybrid_copy):
    def shrink(tensors):
        tensors["model.layers.0.linear_attn.k_conv1d.weight"] = np.ones((40, 1, 4), np.float32)

    _rewrite_weights(hybrid_copy, shrink)
    with pytest.raises(HFFormatError, match=r"k_conv1d\.weight.* have shapes \[\[48, 1, 4\], \[40, 1, 4\]"):
        load.load_hf_params(hybrid_copy, hybrid.config)


def test_rejects_unexpected_tensor(hybrid, hybrid_copy):
    _rewrite_weights(hybrid_copy, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": np.ones(3, np.float32)}))
    with pytest.raises(HFFormatError, match=r"1 tensors the model .* does not have, e.g\. \['model\.layers\.9\.mlp"):
        load.load_hf_params(hybrid_copy, hybrid.config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tie_word_embeddings", True, "tie_word_embeddings=true"),
        ("hidden_act", "gelu", "hidden_act='gelu'"),
        (
            "rope_parameters",
            {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
            "rope_parameters.rope_type='yarn'",
        ),
        ("layer_types", ["linear_attention", "sliding_attention"] * 2, r"layer_types has \['sliding_attention'\]"),
        ("layer_types", ["full_attention"] * 3, "layer_types has 3 entries but num_hidden_layers=4"),
        ("num_attention_heads", None, "the field 'num_attention_heads' is missing"),
    ],
)
def test_rejects_unrepresentable_hf_config(hybrid_copy, field, value, message):
    config = json.loads((hybrid_copy / "config.json").read_text())
    if value is None:
        del config[field]
    else:
        config[field] = value
    (hybrid_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFFormatError, match=rf"{hybrid_copy / 'config.json'}: {message}"):
        load.run_config_from_hf(hybrid_copy)


def test_rejects_olmo3_with_per_layer_thetas(tmp_path):
    transformers.Olmo3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e4},
            "sliding_attention": {"rope_type": "default", "rope_theta": 5e5},
        },
    ).save_pretrained(tmp_path)
    with pytest.raises(
        HFFormatError,
        match=r"rope_parameters\.full_attention, rope_parameters\.sliding_attention " r"have different rope_theta",
    ):
        load.run_config_from_hf(tmp_path)


@pytest.mark.parametrize(
    "pattern, overrides, message",
    [
        (("gdn",), {}, r"layer_pattern=\('gdn',\) has no 'attn' layer"),
        (("gdn", "swa", "attn"), {}, "mixes GDN and 'swa' layers"),
        (("swa", "attn"), {"use_rope": False}, "use_rope=False: olmo3 always applies RoPE"),
        (("gdn", "attn"), {"gdn": {"norm_eps": 1e-6}}, "gdn.norm_eps=1e-06"),
        (("gdn", "attn"), {"gdn_norm": "post"}, r"^config\.model\.gdn_norm='post': transformers' olmo_hybrid has only"),
    ],
)
def test_rejects_unrepresentable_model(pattern, overrides, message, tmp_path):
    run_config = small_config(pattern)
    run_config.model.num_layers = len(pattern)
    run_config.model.update(overrides)
    config = ModelConfig.from_config(run_config.model)
    with pytest.raises(HFFormatError, match=message):
        export_params(_random_params(config, 0), config, tmp_path / "hf", dtype="float32", tokens=TOKENS)
    assert not (tmp_path / "hf").exists()


def test_import_refuses_post_norm_gdn(hybrid):
    """transformers' GDN layers are pre-norm: their weights do not load into post-norm GDN blocks."""
    post_norm = dataclasses.replace(hybrid.config, gdn_norm="post")
    with pytest.raises(HFFormatError, match=r"^config\.model\.gdn_norm='post': transformers' olmo_hybrid has only"):
        load.load_hf_params(hybrid.hf_dir, post_norm)


def test_rejects_params_of_another_model(hybrid, tmp_path):
    params = api.load_workdir(hybrid.workdir).params
    params["groups"]["blocks"][1]["attention"]["k_proj"]["kernel"] = np.zeros((2, 48, 8), np.float32)
    with pytest.raises(
        HFFormatError,
        match=r"params groups/blocks/1/attention/k_proj/kernel \(for "
        r"model\.layers\.1\.self_attn\.k_proj\.weight\) has shape \[2, 48, 8\].* needs \[2, 48, 24\]",
    ):
        export_params(params, hybrid.config, tmp_path / "hf", dtype="float32", tokens=TOKENS)


def test_training_starts_from_hf_weights(hybrid, tmp_path):
    """`init_from_hf` takes the architecture from config.json and the exported weights as step 0's parameters."""
    from hybridlm.trainer import Trainer

    run_config = small_config(("gdn", "gdn"))  # a different architecture: the checkpoint's must win
    run_config.model.gdn_norm = "post"
    run_config.init_from_hf = str(hybrid.hf_dir)
    trainer = Trainer(run_config, tmp_path / "run")
    assert trainer.model_config.layer_pattern == hybrid.config.layer_pattern
    assert trainer.model_config.gdn_norm == "pre"
    state = trainer.initial_state()
    trainer.checkpointer.close()
    expected = api.load_model(hybrid.workdir).params
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), jax.device_get(expected))
    assert int(state["step"]) == 0
