"""hybridlm.sweep: a micro ladder's stable run and decays, interrupted, run in parts and resumed, recorded as
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
    """A sweep stopped after the stable run's first part resumes it; --multiples=0.5 trains the stable run only to
    the 0.5x decay's branch (step 18 of 37) and records that decay; a sweep of all multiples then resumes the stable
    run from there (its schedule's end is set, so the longer run needs no flag) and records the 1x decay; then
    nothing is left, here or on a machine holding only the results file."""
    ladder, workdir = tmp_path / "micro_ladder.py", tmp_path / "sweep"
    ladder.write_text(MICRO_LADDER.replace("multiples=(1.0,)", "multiples=(0.5, 1.0)"))
    stable = workdir / "transformer-micro"

    first = _sweep(capsys, ladder, workdir, "--multiples=0.5", "--stop_after=1")
    assert "sweep: run 1/2 transformer-micro: step 0 of 18; 0 of " in first and "ETA after the first run" in first
    assert "stopped after 1 runs" in first
    assert checkpoint.saved_steps(checkpoint.checkpoints_dir(stable)) == [18]
    assert not (workdir / sweep.RESULTS_FILE).exists()

    second = _sweep(capsys, ladder, workdir, "--multiples=0.5")
    assert "sweep: run 2/2 transformer-micro/decay0.5x: step 18 of 23;" in second and "run 1/2" not in second
    assert "FLOPs done (78%); ETA after the first run" in second  # the stable run's 18 steps of 18 + 5
    decay = workdir / "transformer-micro.decay0.5x"
    steps = [json.loads(line)["step"] for line in checkpoint.metrics_file(decay).read_text().splitlines()]
    assert min(steps) > 18  # it started from the stable run's checkpoint at its branch step
    [record] = read_records(workdir / sweep.RESULTS_FILE)
    row = json.loads((workdir / sweep.RESULTS_FILE).read_text())
    assert record.arch == "transformer" and row["run"] == "transformer-micro/decay0.5x"
    assert record.tokens == 23 * 4 * 64 and record.params < row["params_total"]
    assert record.flops > 6 * record.params * record.tokens and row["tokens_per_sec"] > 0
    assert row["corpus"] == {"source": "builtin", "paths": [], "max_bytes": 2_000_000}

    third = _sweep(capsys, ladder, workdir)
    assert "sweep: run 1/3 transformer-micro: step 18 of 37;" in third and "decay0.5x" not in third
    assert "sweep: recorded transformer-micro/decay1x" in third
    steps = [json.loads(line)["step"] for line in checkpoint.metrics_file(stable).read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 37  # on from step 18: the records of 0-18 come first, once
    assert [r.tokens for r in read_records(workdir / sweep.RESULTS_FILE)] == [23 * 4 * 64, 46 * 4 * 64]

    fourth = _sweep(capsys, ladder, workdir)  # nothing left: no run trains, nothing is recorded twice
    assert "sweep: run" not in fourth and "all 3 runs of the shard are done" in fourth
    assert len(read_records(workdir / sweep.RESULTS_FILE)) == 2

    # On a fresh machine with only the results file, the family is done: its stable run does not train again.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / sweep.RESULTS_FILE).write_text((workdir / sweep.RESULTS_FILE).read_text())
    fifth = _sweep(capsys, ladder, fresh)
    assert "sweep: run" not in fifth and "all 3 runs of the shard are done" in fifth

    assert sweep.main([f"--ladder={ladder}", f"--workdir={workdir}", "--multiples=0.5,3", *OVERRIDES]) == 2
    assert "--multiples=0.5,3: the ladder's decays have the multiples 0.5, 1.0" in capsys.readouterr().err


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


def test_a_stable_run_stops_at_its_last_pending_branch_only_where_its_schedule_end_is_set():
    def run(arg: str, schedule_steps: int | None, num_steps: int, branch: int | None = None) -> sweep.Run:
        config = {
            "ladder": {"family": "f"},
            "optim": {"schedule_steps": schedule_steps},
            "train": {"num_steps": num_steps},
        }
        parent = None if branch is None else pathlib.Path("f")
        return sweep.Run(arg, config_dict.ConfigDict(config | {"init_from_step": branch}), pathlib.Path(arg), parent)

    decays = [run("f/decay0.5x", 23, 23, branch=18), run("f/decay1x", 46, 46, branch=37)]
    stopped = sweep.stop_at_last_branch(run("f", 46, 37), decays[:1])
    assert stopped.config.train.num_steps == 18 and stopped.overrides == ("--config.train.num_steps=18",)
    assert sweep.stop_at_last_branch(run("f", 46, 37), decays).overrides == ()  # the 1x decay branches at its end
    assert sweep.stop_at_last_branch(run("f", None, 37), decays[:1]).overrides == ()  # 37 places the schedule's end
    assert sweep.stop_at_last_branch(decays[1], decays[:1]) is decays[1]


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
