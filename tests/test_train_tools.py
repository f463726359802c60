"""tools/bench_train.py and tools/profile_step.py: both run end to end on the CPU with small_config's model, and
profile_step's trace and HLO reading is checked on a trace shaped like one from an H200 with jax 0.11.2 (hlo_op
args naming HLO instructions, consecutive kernels overlapping by a fraction of a microsecond)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from conftest import load_tool, small_config, write_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_train")


@pytest.fixture(scope="module")
def prof():
    return load_tool("profile_step")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> pathlib.Path:
    """A config file whose get_config() is small_config() (a 2-layer gdn + attn model, 32-token sequences)."""
    return write_config_file(tmp_path_factory.mktemp("configs"), "conftest", "small_config", "small")


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "tools" / name), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each markdown table in `text`, under the last line of text before it, as rows keyed by its header."""
    tables: dict[str, list[dict[str, str]]] = {}
    title, header = "", None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            title, header = (line.rstrip(":"), None) if line.strip() else (title, header)
        elif header is None:
            header, tables[title] = cells, []
        elif not line.startswith("|---"):
            tables[title].append(dict(zip(header, cells)))
    return tables


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_bench_train_times_the_step_in_a_fresh_process(bench, config_file, tmp_path):
    """One batch size on the CPU: a row with tokens/s, compile time and XLA's memory plan (the CPU reports no
    allocator peak) in the section --write appends, and the same row last in the printed table."""
    out = tmp_path / "BENCHMARKS.md"
    args = (f"--config={config_file}", "--batch=4", "--steps=2", "--warmup=1", f"--write={out}")
    result = _run_tool("bench_train.py", *args)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Train step, " in text and ", cpu, jax " in text and "--batch=4" in text
    ((title, (row,)),) = _markdown_tables(text).items()
    assert title.startswith("2 timed steps after 1 warm-up steps") and tuple(row) == bench.COLUMNS
    assert (row["config"], row["devices"], row["seq"], row["batch"], row["MFU"]) == ("small", "1", "32", "4", "-")
    assert _number(row["tokens/s"]) > 0 and _number(row["compile s"]) > 0 and _number(row["GFLOP/token"]) > 0
    peak, source = row["peak GiB"].split(" ", 1)
    assert _number(peak) > 0 and source == "(XLA plan)"
    low, high = map(float, row["step ms min-max"].split("-"))
    assert 0 < low <= _number(row["step ms"]) <= high
    assert result.stdout.splitlines()[-1].split() == " ".join(row.values()).split()  # the table comes last


def test_weak_scaling_runs_each_device_count_at_its_share_of_the_batch(bench, config_file, tmp_path):
    """--devices 1,2 on 2 of the 4 CPU devices the parent sees: a row per count, each on that many devices at count x
    --batch rows, then the tokens/s per device against 1 device's; several batch sizes are refused in one line."""
    out = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, str(ROOT / "tools" / "bench_train.py"), f"--config={config_file}", "--steps=1"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    run = lambda *more: subprocess.run(
        [*command, *more], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    result = run("--batch=2", "--warmup=1", "--devices=1,2", f"--write={out}")
    assert result.returncode == 0, result.stderr
    ((_, rows),) = _markdown_tables(out.read_text()).items()
    assert [(row["devices"], row["batch"]) for row in rows] == [("1", "2"), ("2", "4")]
    shares = re.search(r"against 1 device\(s\): 1 devices 100\.0%, 2 devices ([\d.]+)%\.$", out.read_text())
    assert shares and float(shares.group(1)) > 0, out.read_text()
    several = run("--batch=2,4", "--devices=1")
    assert several.stderr.strip().endswith("error: --devices takes one --batch (rows per device), not 2 sizes")


def test_weak_scaling_counts_and_the_devices_a_child_sees(bench):
    """Device counts must be whole numbers >= 1; a child sees the first N GPUs of those visible (all when
    CUDA_VISIBLE_DEVICES is unset) and N CPU devices."""
    for bad in (["0", "2"], ["two"]):
        with pytest.raises(SystemExit, match=f"--devices {','.join(bad)}: give device counts of 1 or more"):
            bench.device_counts(bad)
    assert bench.device_counts(["1", "8"]) == [1, 8]
    assert bench.first_devices(2, "3,5,7") == {"CUDA_VISIBLE_DEVICES": "3,5", "JAX_NUM_CPU_DEVICES": "2"}
    assert bench.first_devices(3, None) == {"CUDA_VISIBLE_DEVICES": "0,1,2", "JAX_NUM_CPU_DEVICES": "3"}


def test_synthetic_batch_at_the_size_asked_for(bench):
    """sized_config sets the batch and sequence length (raising max_seq_len to fit); the synthetic batch has random
    tokens in the vocab, targets shifted by one, and documents of about DOCUMENT_TOKENS tokens when masked."""
    setup = bench.train_setup
    config = setup.sized_config(small_config(), 3, 5000)
    assert (config.data.batch_size, config.data.seq_len, config.model.max_seq_len) == (3, 5000, 5000)
    assert small_config().model.max_seq_len == setup.sized_config(small_config(), 2, 8).model.max_seq_len
    config.data.document_mask = True
    batch = setup.synthetic_batch(config)
    assert all(x.shape == (3, 5000) and x.dtype == "int32" for x in batch.values())
    assert (batch["inputs"][:, 1:] == batch["targets"][:, :-1]).all()
    assert 0 <= batch["inputs"].min() and batch["targets"].max() < config.model.vocab_size
    segments = batch["segment_ids"]
    assert (segments[:, 0] == 0).all() and (segments[:, 1:] - segments[:, :-1] >= 0).all()
    assert 3 * 2 <= segments[:, -1].sum() <= 3 * 9  # about 5 documents a row
    config.data.document_mask = False
    assert not setup.synthetic_batch(config)["segment_ids"].any()


@pytest.mark.parametrize(
    "message, needed",
    [
        ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 162358862848 bytes.", 162358862848),
        ("RESOURCE_EXHAUSTED: Out of memory allocating 20029400304 bytes.", 20029400304),
        (
            (
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4770354232 bytes.\nBufferAssignment OOM "
                "Debugging.\n  parameter allocation:  372.76MiB\n  total allocation:   14.50GiB\n"
            ),
            round(14.5 * 2**30),
        ),
        ("RESOURCE_EXHAUSTED: Failed to allocate request for 2.50GiB on device ordinal 0", round(2.5 * 2**30)),
        ("RESOURCE_EXHAUSTED: out of memory", None),
    ],
)
def test_out_of_memory_is_a_row_with_what_xla_asked_for(bench, monkeypatch, message: str, needed: int | None):
    """Device memory running out while building or running the step becomes the batch size's record (the parent
    prints it as a row and goes on), with what XLA asked for; another RESOURCE_EXHAUSTED (a kernel's shared memory,
    as seen on an H200) is a failure with XLA's message."""

    def failing_runner(error: str):
        def runner(config):
            raise jax.errors.JaxRuntimeError(error)

        return runner

    monkeypatch.setattr(bench.train_setup, "StepRunner", failing_runner(message))
    record = bench.measure(small_config(), 8, 32, steps=1, warmup=0)
    assert (record["batch"], record["seq"], record["error"], record["needed_bytes"]) == (8, 32, "out of memory", needed)
    asked = f" (XLA asked for {needed / 2**30:.1f} GiB)" if needed else ""
    assert bench.cells("small", record) == ["small", "1", "32", "8", "out of memory" + asked]
    shared_memory = "RESOURCE_EXHAUSTED: Shared memory size limit exceeded: requested 327680, available: 232448"
    monkeypatch.setattr(bench.train_setup, "StepRunner", failing_runner(shared_memory + "\ncontext: []"))
    record = bench.measure(small_config(), 8, 32, steps=1, warmup=0)
    assert record["error"] == f"failed: {shared_memory} / context: []" and "needed_bytes" not in record


def test_profile_step_splits_a_cpu_step_by_kind_and_region(prof, config_file, tmp_path):
    """On the CPU the ops' host events are the device events: all but a sliver of their time (a CPU trace may hold a
    few events under names the compiled HLO lacks) matches HLO instructions, every model region and each kind an
    XLA-only step has get time, and the two tables account for the same time."""
    out = tmp_path / "BENCHMARKS.md"
    args = (f"--config={config_file}", "--steps=1", "--warmup=1", "--top=3", f"--write={out}")
    result = _run_tool("profile_step.py", *args)
    assert result.returncode == 0, result.stderr
    assert re.search(r"us in device events per device: (idle|they overlap)", result.stdout), result.stdout
    unmapped = re.findall(r"warning: ([\d.]+)% of the device time", result.stdout)
    assert len(unmapped) == len(re.findall("warning", result.stdout)), result.stdout
    assert all(float(share) < 5 for share in unmapped), result.stdout
    text = out.read_text()
    assert "## Train step profile, " in text and "small at batch 4 x seq 32: 1 steps traced" in text
    tables = _markdown_tables(text)
    kinds = {row["kind"]: _number(row["us/step"]) for row in tables["By kind"]}
    (regions,) = [rows for title, rows in tables.items() if title.startswith("By model region")]
    region_us = {row["region"]: _number(row["us/step"]) for row in regions}
    backward_us = {row["region"]: _number(row["backward us"]) for row in regions}
    assert set(region_us) == {*prof.REGIONS, prof.NO_REGION} and all(us > 0 for us in region_us.values())
    assert backward_us["gdn_rule"] > 0 and backward_us["mlp"] > 0 and backward_us["optimizer"] == 0
    # COMMUNICATION: the short convolutions run under shard_map, whose backward sums their weight gradients over the
    # batch's mesh axes (an all-reduce, here over one device).
    expected = {prof.MATMUL, prof.FUSIONS, prof.COMMUNICATION, "short convolution", "optimizer", "normalisation"}
    assert set(kinds) - {prof.OTHER} == expected
    assert all(us > 0 for us in kinds.values())
    assert sum(kinds.values()) == pytest.approx(sum(region_us.values()), rel=1e-3)
    assert kinds["optimizer"] == pytest.approx(region_us["optimizer"], rel=1e-3)
    (top,) = [rows for title, rows in tables.items() if title.startswith("The 3 largest")]
    assert len(top) == 3 and all(row["kind"] in kinds and row["region"] in region_us for row in top)


FORWARD = "jit(train_step)/jvp()/while/body/closed_call"  # op_name prefixes inside the layer scan
BACKWARD = "jit(train_step)/transpose(jvp())/while/body/closed_call"


def _meta(op_name: str) -> str:
    return f'metadata={{op_name="{op_name}" stack_frame_id=3}}'


# The compiled step's HLO text, as `compiled.as_text()` prints it on a GPU, cut down to one of everything.
HLO = "\n".join(
    [
        "HloModule jit_train_step, is_scheduled=true",
        "",
        "%fused_computation.1 (param_0: bf16[8,16]) -> bf16[8,16] {",
        "  %param_0 = bf16[8,16]{1,0} parameter(0)",
        f"  ROOT %multiply.1 = bf16[8,16]{{1,0}} multiply(%param_0, %param_0), {_meta(FORWARD + '/gdn/gdn_conv/mul')}",
        "}",
        "",
        "%gemm_fusion_dot.2_computation (param_0.1: bf16[8,16], param_1: bf16[16,16]) -> bf16[8,16] {",
        "  %param_0.1 = bf16[8,16]{1,0} parameter(0)",
        "  %param_1 = bf16[16,16]{1,0} parameter(1)",
        "  ROOT %dot.2 = bf16[8,16]{1,0} dot(%param_0.1, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}",
        "}",
        "",
        "%body.4 (arg: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {",
        "  %arg = (s32[], bf16[8,16]{1,0}) parameter(0)",
        "  %get-tuple-element.5 = bf16[8,16]{1,0} get-tuple-element(%arg), index=1",
        "  %copy.6 = bf16[8,16]{1,0} copy(%get-tuple-element.5)",
        "  %get-tuple-element.7 = s32[] get-tuple-element(%arg), index=0",
        "  ROOT %tuple.8 = (s32[], /*index=1*/bf16[8,16]{1,0}) tuple(%get-tuple-element.7, %copy.6)",
        "}",
        "",
        "%cond.9 (arg.1: (s32[], bf16[8,16])) -> pred[] {",
        "  %arg.1 = (s32[], bf16[8,16]{1,0}) parameter(0)",
        "  ROOT %constant.10 = pred[] constant(false)",
        "}",
        "",
        "ENTRY %main.20 (p0: bf16[8,16], p1: bf16[16,16], p2: s32[]) -> bf16[8,16] {",
        "  %p0 = bf16[8,16]{1,0} parameter(0)",
        "  %p1 = bf16[16,16]{1,0} parameter(1)",
        "  %p2 = s32[] parameter(2)",
        "  %fusion.1 = bf16[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1",
        (
            "  %gemm_fusion_dot.2 = bf16[8,16]{1,0} fusion(%fusion.1, %p1), kind=kCustom, "
            f"calls=%gemm_fusion_dot.2_computation, {_meta('jit(train_step)/optimizer/dot_general')}, "
            'backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}'
        ),
        (
            "  %custom-call.3 = bf16[8,16]{1,0} custom-call(%gemm_fusion_dot.2), "
            f'custom_call_target="__gpu$xla.gpu.triton", {_meta(BACKWARD + "/gdn/gdn_rule/pallas_call")}'
        ),
        "  %tuple.11 = (s32[], bf16[8,16]{1,0}) tuple(%p2, %custom-call.3)",
        "  %while.12 = (s32[], bf16[8,16]{1,0}) while(%tuple.11), condition=%cond.9, body=%body.4, "
        + _meta(FORWARD + "/gdn/gdn_rule/while"),
        "  %get-tuple-element.13 = bf16[8,16]{1,0} get-tuple-element(%while.12), index=1",
        (
            "  %custom-call.14 = (bf16[8,16]{1,0}, u8[0]{0}) custom-call(%get-tuple-element.13, %p0, %p0), "
            f'custom_call_target="__cudnn$fmhaSoftmaxBackward", {_meta(BACKWARD + "/attention/dot_product_attention")}'
        ),
        "  %get-tuple-element.15 = bf16[8,16]{1,0} get-tuple-element(%custom-call.14), index=0",
        (
            "  %custom-call.16 = (bf16[8,16]{1,0}, s8[4194304]{0}) custom-call(%get-tuple-element.15, %p1), "
            f'custom_call_target="__cublas$lt$matmul", {_meta(FORWARD + "/mlp/dot_general")}'
        ),
        "  %get-tuple-element.17 = bf16[8,16]{1,0} get-tuple-element(%custom-call.16), index=0",
        "  %custom-call.21 = bf16[8,16]{1,0} custom-call(%get-tuple-element.17), "
        f'custom_call_target="__gpu$xla.gpu.triton", {_meta(FORWARD + "/attention/pallas_call")}',
        "  %all-reduce.18 = bf16[8,16]{1,0} all-reduce(%get-tuple-element.17), replica_groups={}, to_apply=%cond.9, "
        + _meta("jit(train_step)/transpose(jvp())/psum"),
        "  %fusion.19 = bf16[8,16]{1,0} fusion(%all-reduce.18), kind=kLoop, calls=%fused_computation.1, "
        + _meta("jit(train_step)/transpose(jvp(norm))/mul"),
        "  ROOT %convert.20 = bf16[8,16]{1,0} convert(%fusion.19), "
        + _meta("jit(train_step)/jvp(jit(_take))/convert_element_type"),
        "}",
    ]
)


def test_parse_hlo_finds_op_names_kinds_and_matmuls(prof):
    """An instruction without op_name takes its fusion's root's, or the op_name of the while that runs its body;
    dots, Triton GEMM fusions and cuBLAS calls are matmuls, a fusion of element-wise ops and a Pallas call not."""
    ops = prof.parse_hlo(HLO)
    assert ops["fusion.1"].op_name == FORWARD + "/gdn/gdn_conv/mul"
    assert ops["copy.6"].op_name == FORWARD + "/gdn/gdn_rule/while"
    assert ops["dot.2"].op_name == "jit(train_step)/optimizer/dot_general"  # from the fusion calling it
    opcodes = [ops[name].opcode for name in ("while.12", "custom-call.14", "tuple.8", "fusion.19")]
    assert opcodes == ["while", "custom-call", "tuple", "fusion"]
    assert ops["custom-call.16"].target == "__cublas$lt$matmul"
    matmuls = {name for name, op in ops.items() if op.matmul}
    assert matmuls == {"dot.2", "gemm_fusion_dot.2", "custom-call.16"}


@pytest.mark.parametrize(
    "op_name, region",
    [
        ("jit(train_step)/jvp()/while/body/closed_call/gdn/gdn_conv/jit(silu)/logistic", "gdn_conv"),
        ("jit(train_step)/transpose(jvp())/while/body/closed_call/gdn/gdn_rule/jit(chunked)/dot", "gdn_rule"),
        ("jit(train_step)/jvp()/while/body/closed_call/gdn/mul", "gdn"),
        ("jit(train_step)/jvp()/while/body/closed_call/attention/norm/rsqrt", "norm"),
        ("jit(train_step)/transpose(jvp(norm))/mul", "norm"),
        ("jit(train_step)/jvp(lm_head_loss)/while/body/closed_call/exp", "lm_head_loss"),
        ("jit(train_step)/optimizer/jit(norm)/sqrt", "optimizer"),  # jit(norm) is a function, not the region
        ("jit(train_step)/jvp(jit(_take))/gather", "other (embedding, casts, glue)"),
        ("", "other (embedding, casts, glue)"),
    ],
)
def test_region_is_the_innermost_named_scope(prof, op_name: str, region: str):
    assert prof.region_of(op_name) == region


def test_profiled_steps_are_compiled_without_command_buffers(prof, monkeypatch):
    """Inside XLA's command buffers (CUDA graphs) every kernel's event names the command buffer, not its instruction
    (seen with jax 0.11.2 on an H200), so the profiled train and decode steps are compiled without them."""
    options = []

    def runner(*args):
        options.append(args[-1])
        raise InterruptedError

    monkeypatch.setattr(prof.train_setup, "StepRunner", runner)
    monkeypatch.setattr(prof, "DecodeRunner", runner)
    for decode in (False, True):
        with pytest.raises(InterruptedError):
            prof.runner_for(small_config(), 4, 32, decode)
    assert options == [{"xla_gpu_enable_command_buffer": ""}] * 2


def test_profile_step_splits_a_decode_step_by_region(config_file, tmp_path):
    """--decode profiles the model's one-token step: the mixers' decode paths carry their regions, nothing is
    backward, and a cache too short for the steps is refused in one line."""
    out = tmp_path / "BENCHMARKS.md"
    args = (f"--config={config_file}", "--decode", "--batch=2", "--seq=16", "--steps=2", "--warmup=1", f"--write={out}")
    result = _run_tool("profile_step.py", *args)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Decode step profile, " in text and "small at 2 rows, a cache of 16 tokens: 2 decode steps" in text
    (regions,) = [rows for title, rows in _markdown_tables(text).items() if title.startswith("By model region")]
    region_us = {row["region"]: _number(row["us/step"]) for row in regions}
    assert {"attention", "gdn", "gdn_conv", "gdn_rule", "mlp", "norm"} <= set(region_us)
    assert all(_number(row["backward us"]) == 0 for row in regions)
    short = _run_tool("profile_step.py", *args[:3], "--seq=4", "--steps=2", "--warmup=1")
    assert short.returncode == 1 and short.stderr.strip().endswith(
        "error: --warmup 1 + --steps 2 decode steps overrun the cache of --seq 4 from position 2; give --seq 6 or more"
    ), short.stderr


COMPUTE_DOT_DO_O = "void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*, void const*, void*)"


def _gpu_trace(steps: int, command_buffer: bool = False) -> dict:
    """A Perfetto trace as jax.profiler writes one on a GPU (its names, args and overlaps as seen on an H200 with
    jax 0.11.2): a host process, and a device process whose stream ran `steps` steps of kernels, each naming the
    HLO instruction that launched it in args["hlo_op"], or with `command_buffer`, as under CUDA graphs, all the
    command buffer. Consecutive kernels overlap by 0.1 us, as they do there."""
    step = [  # kernel, hlo_op (None: no args), us
        ("loop_multiply_fusion", "fusion.1", 10.0),
        ("gemm_fusion_dot_2", "gemm_fusion_dot.2", 20.0),
        ("gdn_solve", "custom-call.3", 40.0),
        ("MemcpyD2D", "copy.6", 3.0),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "custom-call.14", 30.0),
        (COMPUTE_DOT_DO_O, "custom-call.14", 4.0),
        ("flash_fwd", "custom-call.21", 12.0),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_TNT", "custom-call.16", 25.0),
        ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "all-reduce.18", 8.0),
        ("loop_multiply_fusion_1", "fusion.19", 5.0),
        ("convert.20", None, 1.0),
        ("Memset 0", None, 2.0),
    ]
    events = [
        {"ph": "M", "name": "process_name", "pid": 701, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 14, "args": {"name": "Stream #14(Compute,Memset)"}},
        {"ph": "X", "pid": 701, "tid": 9, "ts": 0.0, "dur": 5000.0, "name": "PjitFunction(jit(train_step))"},
        {"ph": "i", "pid": 1, "tid": 14, "ts": 0.0, "name": "marker"},
    ]
    ts = 0.0
    for _ in range(steps):
        for name, hlo_op, dur in step:
            args = {"context_id": "$$1", "correlation_id": "7", "hlo_module": "jit_train_step", "tf_op": "XlaModule:"}
            if hlo_op == "fusion.19":  # reached through long_name
                args = {"long_name": hlo_op}
            elif hlo_op:
                args["hlo_op"] = "command_buffer_1" if command_buffer else hlo_op
            events.append({"ph": "X", "pid": 1, "tid": 14, "ts": ts, "dur": dur, "name": name, "args": args})
            ts += dur - 0.1
    return {"displayTimeUnit": "ns", "traceEvents": events}


def test_gpu_trace_is_split_by_kind_and_region(prof):
    """Each GPU kernel reaches its HLO instruction through hlo_op (or long_name, or its own name) and keeps its whole
    duration; kernel names and custom-call targets decide the kernel kinds, a matmul in the optimizer stays a matmul,
    and the rest goes by region. Per step."""
    kernels = prof.read_kernels(_gpu_trace(steps=2), prof.parse_hlo(HLO))
    assert len(kernels) == 24 and [k.op is None for k in kernels].count(True) == 2  # the Memsets
    assert sum(k.us for k in kernels) == 2 * 160.0
    kinds = {kind: t.us for kind, t in prof.totals(kernels, lambda k: k.kind, steps=2).items()}
    assert kinds == {
        prof.GDN_KERNEL: 40.0,
        prof.ATTENTION_KERNEL: 46.0,  # cuDNN's backward kernels (one by its custom call) and our Pallas forward
        prof.MATMUL: 45.0,  # the Triton GEMM fusion (optimizer) and cuBLASLt (mlp)
        prof.COMMUNICATION: 8.0,
        "short convolution": 10.0,
        "normalisation": 5.0,
        prof.FUSIONS: 4.0,  # the copy in the GDN scan's body and the convert
        prof.OTHER: 2.0,
    }
    regions = prof.totals(kernels, lambda k: k.region, steps=2)
    assert {region: t.us for region, t in regions.items()} == {
        "gdn_rule": 43.0,
        "attention": 46.0,
        "mlp": 25.0,
        "optimizer": 20.0,
        "gdn_conv": 10.0,
        prof.NO_REGION: 11.0,  # the all-reduce, the convert and the Memset
        "norm": 5.0,
    }
    assert {region: t.backward_us for region, t in regions.items() if t.backward_us} == {
        "gdn_rule": 40.0,
        "attention": 34.0,
        prof.NO_REGION: 8.0,
        "norm": 5.0,
    }
    assert regions["gdn_rule"].count == 2.0


def test_kernels_of_a_command_buffer_are_reported_unmapped(prof):
    """Under CUDA graphs every kernel's hlo_op names the command buffer: the summary warns with the share of time
    that matched no instruction, and kinds fall back on kernel names alone."""
    kernels = prof.read_kernels(_gpu_trace(steps=1, command_buffer=True), prof.parse_hlo(HLO))
    step_line, warning = prof.summary(prof.Profile(kernels, 1, 200.0, "NVIDIA H200"))
    assert step_line.endswith("160 us in device events per device: idle 40 us (20.0%)")
    assert warning.startswith(f"warning: {154 / 160:.1%} of the device time (10 events per step, largest gdn_solve,")
    kinds = {kind: t.us for kind, t in prof.totals(kernels, lambda k: k.kind, steps=1).items()}
    assert kinds == {
        prof.GDN_KERNEL: 40.0,
        prof.ATTENTION_KERNEL: 42.0,  # by name; the cuDNN kernel named after no attention is "other"
        prof.MATMUL: 45.0,
        prof.COMMUNICATION: 8.0,
        prof.OTHER: 19.0,
        "normalisation": 5.0,  # through long_name
        prof.FUSIONS: 1.0,  # the convert, through its name
    }


def _op_event(name: str, tid: int, ts: float, dur: float, module: str = "jit_train_step") -> dict:
    """A complete event of an XLA op on a CPU thread, as the CPU runtime records them."""
    args = {"hlo_op": name, "hlo_module": module}
    return {"ph": "X", "pid": 5, "tid": tid, "ts": ts, "dur": dur, "name": name, "args": args}


def test_nested_events_count_once_and_cpu_traces_use_op_events(prof):
    """Without a GPU process the events carrying hlo_op args are the device events, less those of other programs; an
    op nested in another on the same thread (a CPU while loop's body) is taken out of the outer one's time, and other
    threads are separate."""
    ops = prof.parse_hlo(HLO)
    trace = [
        {"ph": "M", "name": "process_name", "pid": 5, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 5, "tid": 1, "ts": 0.0, "dur": 100.0, "name": "ThunkExecutor::Execute"},
        _op_event("while.12", 1, 0.0, 50.0),
        _op_event("copy.6", 1, 5.0, 20.0),
        _op_event("copy.6", 1, 30.0, 15.0),
        {"ph": "X", "pid": 5, "tid": 1, "ts": 45.0, "dur": 0.5, "name": "end: copy.6", "args": {}},
        _op_event("fusion.1", 2, 10.0, 30.0),
        _op_event("fusion.19", 1, 60.0, 10.0),
        _op_event("fusion.19", 1, 80.0, 10.0, module="jit_synthetic_batch"),
    ]
    kernels = prof.read_kernels(trace, ops, "jit_train_step")
    assert [(k.name, k.us) for k in kernels] == [
        ("while.12", 15.0),
        ("copy.6", 20.0),
        ("copy.6", 15.0),
        ("fusion.1", 30.0),
        ("fusion.19", 10.0),
    ]
    assert {region: t.us for region, t in prof.totals(kernels, lambda k: k.region, steps=1).items()} == {
        "gdn_rule": 50.0,
        "gdn_conv": 30.0,
        "norm": 10.0,
    }
