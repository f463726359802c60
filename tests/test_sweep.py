"""hybridlm.sweep: a micro ladder's stable run and decay, interrupted after the first and resumed, recorded as
hybridlm.scaling.records reads them; shards and flags."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from ml_collections import config_dict

from hybridlm import checkpoint, sweep
from hybridlm.data import token_files
from hybridlm.scaling.records import read_records

# One 64-wide, 4-layer transformer on the built-in bytes: a 37-step stable run and a decay from step 37 to 46.
MICRO_LADDER = """
from experiments.ladder import Ladder

MICRO = Ladder(
    sizes={"micro": (64, 4)}, seq_len=64, head_dim=32, vocab_size=320, data_source="builtin", data_paths=(),
    max_bytes=2_000_000, reference_batch_tokens=512, min_batch_seqs=4, batch_multiple=4, tokens_per_param=0.05,
    multiples=(1.0,), dtype="float32", gdn_chunk_size=16,
)


def get_config(arg="transformer-micro"):
    return MICRO.config(arg)


def runs(archs=None, sizes=None):
    return MICRO.runs(archs, sizes)
"""
OVERRIDES = ["--config.train.checkpoint_every=1000", "--config.train.eval_batches=2", "--config.train.log_every=9"]


def _sweep(capsys: pytest.CaptureFixture, ladder: pathlib.Path, workdir: pathlib.Path, *flags: str) -> str:
    """The sweep's own output (its trainer subprocesses write past capsys)."""
    args = [f"--ladder={ladder}", f"--workdir={workdir}", "--archs=transformer", *flags, *OVERRIDES]
    assert sweep.main(args) == 0
    return capsys.readouterr().out


def test_an_interrupted_sweep_resumes_and_records_each_decay(tmp_path, capsys):
    ladder, workdir = tmp_path / "micro_ladder.py", tmp_path / "sweep"
    ladder.write_text(MICRO_LADDER)

    first = _sweep(capsys, ladder, workdir, "--stop_after=1")
    assert "sweep: run 1/2 transformer-micro: step 0 of 37; 0 of " in first and "ETA after the first run" in first
    assert "stopped after 1 runs" in first
    assert checkpoint.saved_steps(checkpoint.checkpoints_dir(workdir / "transformer-micro")) == [37]
    assert not (workdir / sweep.RESULTS_FILE).exists()

    second = _sweep(capsys, ladder, workdir)
    assert "sweep: run 2/2 transformer-micro/decay1x: step 37 of 46;" in second and "run 1/2" not in second
    assert "FLOPs done (80%); ETA after the first run" in second  # the stable run's 37 steps of 37 + 9
    decay = workdir / "transformer-micro.decay1x"
    steps = [json.loads(line)["step"] for line in checkpoint.metrics_file(decay).read_text().splitlines()]
    assert min(steps) > 37  # it started from the stable run's checkpoint at its branch step
    [record] = read_records(workdir / sweep.RESULTS_FILE)
    row = json.loads((workdir / sweep.RESULTS_FILE).read_text())
    assert record.arch == "transformer" and row["run"] == "transformer-micro/decay1x"
    assert record.tokens == 46 * 4 * 64 and record.params < row["params_total"]
    assert record.flops > 6 * record.params * record.tokens and row["tokens_per_sec"] > 0
    assert row["corpus"] == {"source": "builtin", "paths": [], "max_bytes": 2_000_000}

    third = _sweep(capsys, ladder, workdir)  # nothing left: no run trains, nothing is recorded twice
    assert "sweep: run" not in third and "all 2 runs of the shard are done" in third
    assert len(read_records(workdir / sweep.RESULTS_FILE)) == 1

    # On a fresh machine with only the results file, the family is done: its stable run does not train again.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / sweep.RESULTS_FILE).write_text((workdir / sweep.RESULTS_FILE).read_text())
    fourth = _sweep(capsys, ladder, fresh)
    assert "sweep: run" not in fourth and "all 2 runs of the shard are done" in fourth


def test_a_sweep_refuses_results_on_other_data(tmp_path, capsys):
    """A results.jsonl whose records trained on another corpus is refused before anything trains."""
    ladder, workdir = tmp_path / "micro_ladder.py", tmp_path / "sweep"
    ladder.write_text(MICRO_LADDER)
    workdir.mkdir()
    other = {"source": "builtin", "paths": [], "max_bytes": 1_000_000}
    (workdir / sweep.RESULTS_FILE).write_text(json.dumps({"run": "hybrid-micro/decay1x", "corpus": other}) + "\n")
    args = [f"--ladder={ladder}", f"--workdir={workdir}", "--archs=transformer", *OVERRIDES]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert "records hybrid-micro/decay1x on other data than this sweep's" in err
    assert "corpus.max_bytes: 1000000 there, 2000000 now" in err
    assert not (workdir / "transformer-micro").exists()


def test_token_files_are_named_by_their_recorded_fingerprint(tmp_path):
    prepared, plain = tmp_path / "prepared", tmp_path / "plain"
    for directory in (prepared, plain):
        directory.mkdir()
        np.arange(100, dtype=np.uint16).tofile(directory / "part-0.bin")
    fingerprint = {"files": 3, "bytes": 10, "content_sha256": "ab12", "tokens": 100, "tokenizer_sha256": "cd34"}
    token_files.write_metadata(prepared, {"tokenizer": "t", "eos_id": 0, "vocab_size": 320, "fingerprint": fingerprint})
    config = config_dict.ConfigDict({"data": {"source": "token_files", "paths": (f"{prepared}/*.bin", f"{plain}/*")}})
    assert sweep.corpus_identity(config) == {"source": "token_files", "corpora": [fingerprint, {"part-0.bin": 200}]}


def _run(family: str) -> sweep.Run:
    return sweep.Run(family, config_dict.ConfigDict({"ladder": {"family": family}}), pathlib.Path(family), None)


def test_shards_split_families_deterministically():
    runs = [_run(f"f{i}") for i in range(5) for _ in range(3)]  # five families of three runs
    shards = [sweep.shard_runs(runs, i, 2) for i in range(2)]
    assert [r.family for r in shards[0]] == [f"f{i}" for i in (0, 2, 4) for _ in range(3)]
    assert sorted(r.family for s in shards for r in s) == sorted(r.family for r in runs)
    assert sweep.parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="--shard=3/3 is not i/n"):
        sweep.parse_shard("3/3")


def test_jobs_run_the_shards_at_once_and_record_every_decay(tmp_path, capsys):
    """--jobs=2 trains the two families in two processes (each a --shard); every decay is recorded once. A rerun
    with a shard more than there are families finds nothing to do."""
    ladder, workdir = tmp_path / "micro_ladder.py", tmp_path / "sweep"
    ladder.write_text(MICRO_LADDER)
    _sweep(capsys, ladder, workdir, "--archs=transformer,hybrid", "--jobs=2")
    runs = sorted(json.loads(line)["run"] for line in (workdir / sweep.RESULTS_FILE).read_text().splitlines())
    assert runs == ["hybrid-micro/decay1x", "transformer-micro/decay1x"]
    _sweep(capsys, ladder, workdir, "--archs=transformer,hybrid", "--jobs=3")  # all done; the third shard has none
    assert sweep.main([f"--ladder={ladder}", f"--workdir={workdir}", "--jobs=2", "--shard=0/2"]) == 2
    assert "--jobs=2: give 1 or more processes, and no --shard" in capsys.readouterr().err
