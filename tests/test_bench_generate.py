"""tools/bench_generate.py end to end on the CPU: small_config's model with random bf16 weights, ours against
transformers' generate on the exported weights, the table printed and appended to a markdown file.

The tool runs in a subprocess: it defines a --prompt flag, as hybridlm.generate's command line does."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

from conftest import write_config_file
from test_train_tools import _markdown_tables, _number

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = [
    "config",
    "batch",
    "prompt",
    "new tokens",
    "ours tokens/s",
    "transformers tokens/s",
    "speedup",
    "floor fraction",
    "compile s",
]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> pathlib.Path:
    """A config file whose get_config() is small_config() (a 2-layer gdn + attn model)."""
    return write_config_file(tmp_path_factory.mktemp("configs"), "conftest", "small_config", "small")


def test_bench_generate_against_transformers(config_file, tmp_path):
    """A prefill row and a decode row per batch size, each with our tokens/s, transformers', the speedup and the
    compile time; the floor fraction is "-" on the CPU (no known bandwidth). The section --write appends names the
    card, jax and the command, and the printed table ends with the same rows."""
    out = tmp_path / "BENCHMARKS.md"
    args = ["--prompt", "64", "--batch", "1,3", "--new_tokens", "8", "--decode_prompt", "16", "--runs", "1"]
    command = [sys.executable, str(ROOT / "tools" / "bench_generate.py"), f"--config={config_file}", *args]
    result = subprocess.run(
        [*command, "--warmup", "1", f"--write={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Generation, " in text and ", cpu, jax " in text and "--batch 1,3" in text
    assert "baseline: transformers " in text
    ((title, rows),) = _markdown_tables(text).items()
    assert title.startswith("decode floor per token: ") and all(list(row) == COLUMNS for row in rows)
    cases = [(row["batch"], row["prompt"], row["new tokens"]) for row in rows]
    assert cases == [("1", "64", "prefill"), ("1", "16", "8"), ("3", "16", "8")]
    for row in rows:
        ours, theirs = _number(row["ours tokens/s"]), _number(row["transformers tokens/s"])
        assert ours > 0 and theirs > 0 and _number(row["compile s"]) > 0, row
        assert _number(row["speedup"].removesuffix("x")) == pytest.approx(ours / theirs, rel=0.02), row
        assert (row["config"], row["floor fraction"]) == ("small", "-")
    printed = result.stdout.splitlines()[-len(rows) :]
    assert [line.split() for line in printed] == [" ".join(row.values()).split() for row in rows]


def test_a_sigterm_writes_the_rows_timed_so_far(config_file, tmp_path):
    """SIGTERM (as `timeout` sends) once our first row is printed: the tool still writes its table, with the rows
    it timed and no baseline cells, and a note that says where it was cut short."""
    out = tmp_path / "BENCHMARKS.md"
    args = ["--prompt", "64", "--batch", "1", "--new_tokens", "4", "--decode_prompt", "16", "--runs", "1"]
    command = [sys.executable, str(ROOT / "tools" / "bench_generate.py"), f"--config={config_file}", *args]
    tool = subprocess.Popen([*command, f"--write={out}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in tool.stdout:
        if line.startswith("ours Case("):  # the prefill row is timed; the decode row is under way
            tool.send_signal(signal.SIGTERM)
            break
    rest = tool.stdout.read()
    assert tool.wait(timeout=300) == 0, rest
    text = out.read_text()
    assert "cut short by SIGTERM after 1 of our 2 rows and 0 of the baseline's" in text
    ((_, rows),) = _markdown_tables(text).items()
    assert [(row["new tokens"], row["transformers tokens/s"]) for row in rows] == [("prefill", "-")]
    assert _number(rows[0]["ours tokens/s"]) > 0
