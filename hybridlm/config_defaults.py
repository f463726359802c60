"""The fields of a run config and their defaults.

`default_run_config` builds a whole run's config: the model (`model_config`, whose `gdn` field is a `gdn_config`) plus
data, optimizer and loop settings. Experiments and the Hugging Face importer build their configs with these and then set what differs.
"""

from __future__ import annotations

from collections.abc import Callable

from ml_collections import config_dict

from hybridlm import partitioning


def _derived(compute: Callable[..., int | None], *inputs: config_dict.FieldReference) -> config_dict.FieldReference:
    """An int field computed by `compute` from the current values of `inputs` each time it is read: it follows
    overrides of them until it is set itself (setting a field drops its computation). ml_collections exports `_Op`
    (its `__all__`) for computations such as this one."""
    first, *rest = inputs
    return config_dict.FieldReference(first, field_type=int, op=config_dict._Op(compute, rest))


def _whole_quotient(dividend: int, divisor: int) -> int | None:
    """dividend / divisor if that is a whole number, else None (ModelConfig.from_config then says what to change)."""
    return dividend // divisor if divisor and dividend % divisor == 0 else None


def _olmo_gdn_key_head_dim(d_model: int, num_key_heads: int) -> int | None:
    """OlmoHybridConfig's default GDN key head width: 3/4 of d_model over the key heads, rounded down."""
    return 3 * d_model // (4 * num_key_heads) if num_key_heads else None


def gdn_config(
    num_heads: int | None = None, key_head_dim: int | None = None, value_head_dim: int | None = None
) -> config_dict.ConfigDict:
    """Gated DeltaNet layer settings (Olmo Hybrid: conv kernel 4, beta in [0, 2], chunk 64): `num_heads` key heads
    of width `key_head_dim`, and as many value heads of width `value_head_dim`.

    num_value_heads follows num_key_heads, and value_head_dim (when None) is twice key_head_dim, through overrides,
    until set themselves. num_heads and key_head_dim None: `model_config` derives them from the model's shape."""
    key_heads = config_dict.FieldReference(num_heads, field_type=int)
    key_dim = config_dict.FieldReference(key_head_dim, field_type=int)
    return config_dict.ConfigDict(
        dict(
            num_key_heads=key_heads,
            num_value_heads=key_heads.identity(),
            key_head_dim=key_dim,
            value_head_dim=key_dim * 2 if value_head_dim is None else value_head_dim,
            conv_kernel=4,
            allow_neg_eigval=True,
            norm_eps=1e-5,
            chunk_size=64,
            impl="auto",
            conv_impl="auto",
            norm_impl="auto",
        )
    )


def model_config(
    *,
    vocab_size: int,
    d_model: int,
    num_layers: int,
    layer_pattern: tuple[str, ...],
    num_heads: int,
    mlp_hidden: int,
    max_seq_len: int,
    gdn: config_dict.ConfigDict | None = None,
) -> config_dict.ConfigDict:
    """The architecture. Fields derived from others follow overrides of those (`--config.model.num_heads=16` also
    changes num_kv_heads, head_dim and the GDN heads) until they are set themselves: attention is MHA
    (num_kv_heads = num_heads) with head_dim = d_model / num_heads, and the GDN shape left open in `gdn` (default:
    all of it) is OlmoHybridConfig's: gdn.num_key_heads = num_heads, gdn.key_head_dim = 3/4 d_model /
    gdn.num_key_heads rounded down, and the value heads as `gdn_config` derives them."""
    d_model_ref, num_heads_ref = config_dict.FieldReference(d_model), config_dict.FieldReference(num_heads)
    model = config_dict.ConfigDict(
        dict(
            vocab_size=vocab_size,
            d_model=d_model_ref,
            num_layers=num_layers,
            layer_pattern=layer_pattern,
            num_heads=num_heads_ref,
            num_kv_heads=num_heads_ref.identity(),
            head_dim=_derived(_whole_quotient, d_model_ref, num_heads_ref),
            mlp_hidden=mlp_hidden,
            max_seq_len=max_seq_len,
            use_rope=True,
            rope_theta=500_000.0,
            sliding_window=4096,
            norm_eps=1e-6,
            init_std=0.02,
            param_dtype="float32",
            dtype="bfloat16",
            remat="full",  # what the backward recomputes: full | dots | dots_and_kernels | none
            scan_layers=True,  # True: one lax.scan over the layer groups; False: unrolled (faster, more memory)
            attention_impl="auto",  # auto | xla | cudnn | pallas_gpu | pallas_tpu
            loss_chunk_tokens=8192,  # the LM head and loss run this many tokens at a time
            gdn_norm="pre",  # GDN blocks' norms on the inputs (pre: Hugging Face's) or the outputs (post: OLMo-core's)
            gdn=gdn_config() if gdn is None else gdn,
        )
    )
    if model.gdn.num_key_heads is None:
        model.gdn.num_key_heads = num_heads_ref.identity()
    if model.gdn.key_head_dim is None:
        model.gdn.key_head_dim = _derived(_olmo_gdn_key_head_dim, d_model_ref, model.gdn.get_ref("num_key_heads"))
    return model


def default_run_config(
    model: config_dict.ConfigDict,
    *,
    description: str,
    seq_len: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    num_steps: int,
) -> config_dict.ConfigDict:
    """A full run: the model plus data, optimizer (AdamW, Olmo's betas, decay and clipping) and loop settings."""
    config = config_dict.ConfigDict()
    config.description = description
    config.seed = 0
    config.init_from_hf = config_dict.placeholder(str)  # a Hugging Face checkpoint directory to start from
    config.model = model
    config.data = config_dict.ConfigDict(
        dict(
            source="builtin",  # builtin | token_files | text | jsonl | array_record | tfds | task
            paths=(),  # files or globs (every source but builtin and tfds)
            weights=config_dict.placeholder(tuple),  # one mixture weight per entry of paths; None: one group
            dtype=config_dict.placeholder(str),  # token files: uint16 | uint32; None: from their metadata.json
            # "byte", or a Hugging Face tokenizer.json (or its directory); None: the one the token files' metadata.json
            # records, else "byte"
            tokenizer=config_dict.placeholder(str),
            # None: the one the token files' metadata.json records, else the one the tokenizer_config.json names
            eos_token=config_dict.placeholder(str),
            text_field="text",  # the JSONL key or tfds feature holding the text
            tfds_name=config_dict.placeholder(str),
            tfds_split="train",
            tfds_data_dir=config_dict.placeholder(str),
            task=config_dict.placeholder(str),  # source task: a name of hybridlm.tasks.TASKS
            # source task: make_task's arguments besides seq_len (config.data.seq_len) and seed (config.seed)
            task_args=config_dict.ConfigDict(dict(min_len=3, max_len=40)),
            seq_len=seq_len,
            batch_size=batch_size,
            max_bytes=config_dict.placeholder(int),  # builtin: cap on the corpus bytes read
            heldout_fraction=0.05,
            document_mask=True,
        )
    )
    config.optim = config_dict.ConfigDict(
        dict(
            lr=lr,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            grad_clip=1.0,
            z_loss=1e-5,
            schedule="cosine",  # cosine | linear | wsd | split_cosine (hybridlm.optim.SCHEDULES)
            warmup_steps=warmup_steps,
            final_lr_ratio=0.1,
            decay_fraction=0.2,  # wsd: the share of the steps after warmup spent decaying
            schedule_steps=config_dict.placeholder(int),  # the step the decay ends at; None: train.num_steps
            midpoint_step=config_dict.placeholder(int),  # split_cosine: the step its first half ends at
        )
    )
    config.train = config_dict.ConfigDict(
        dict(
            num_steps=num_steps,
            log_every=10,
            eval_every=200,
            eval_batches=8,
            checkpoint_every=200,
            checkpoint_minutes=config_dict.placeholder(float),  # also save once this many minutes pass; None: off
            keep_checkpoints=3,
            # resume even if config.optim or num_steps differ from the checkpointed run's (hybridlm.checkpoint)
            allow_resume_changes=False,
            max_consecutive_skips=10,  # stop the run after this many skipped steps in a row (hybridlm.skip_step)
            # MFU's denominator, dense bf16 FLOP/s per device; None: hybridlm.flops.PEAK_FLOPS by device kind
            peak_flops_per_device=config_dict.placeholder(float),
        )
    )
    config.mesh = mesh_config()
    return config


def mesh_config(**sizes: int) -> config_dict.ConfigDict:
    """The device mesh (hybridlm.partitioning): sizes of its axes slices x data x fsdp x tensor, one of them -1 for
    the devices left over (default: data parallelism over every device), and overrides of the logical-axis rules."""
    mesh = config_dict.ConfigDict(dict(slices=1, data=-1, fsdp=1, tensor=1, rules=partitioning.RULES))
    mesh.update(sizes)
    return mesh
