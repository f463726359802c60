"""hybridlm.scaling and tools/scaling_fit.py: the fit recovers a known law from a ladder-shaped synthetic sample, its
bootstrap interval covers the truth, the token savings match their closed forms, a target below an architecture's
loss floor is reported as out of reach, and the command line writes the table and the plots."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

from conftest import load_tool
from hybridlm.scaling import LossLaw, Record, bootstrap_laws, estimate, fit_law, read_records, token_savings
from hybridlm.scaling.analysis import Analysis
from hybridlm.scaling.report import markdown

CHINCHILLA = LossLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Hoffmann et al. 2022, eq. 10
SIZES = np.geomspace(2e7, 6.4e8, 6)  # 32x, like a small ladder
TOKENS_PER_PARAM = (5, 20, 80)


def _efficient(law: LossLaw, multiplier: float) -> LossLaw:
    """`law` with each token worth `multiplier` tokens: L(N, D) of the result is law's L(N, multiplier D)."""
    return dataclasses.replace(law, B=law.B * multiplier**-law.beta)


def _ladder(law: LossLaw, arch: str = "x", noise: float = 0.0, seed: int = 0, flops_per_param_token=6.0):
    """Records at SIZES x TOKENS_PER_PARAM with losses from `law` times exp(noise * standard normal)."""
    rng = np.random.default_rng(seed)
    return [
        Record(arch, n, m * n, flops_per_param_token * n * m * n, law.loss(n, m * n) * math.exp(noise * rng.normal()))
        for n in SIZES
        for m in TOKENS_PER_PARAM
    ]


@pytest.fixture(scope="module")
def noisy() -> list[Record]:
    # 0.1% noise: alpha is within 5% for each of 12 seeds tried; at 0.2% it strays by up to 8% (18 points, E free).
    return _ladder(CHINCHILLA, noise=1e-3)


@pytest.fixture(scope="module")
def noisy_fit(noisy) -> LossLaw:
    return fit_law(noisy)


def test_fit_recovers_exponents(noisy_fit):
    assert noisy_fit.alpha == pytest.approx(CHINCHILLA.alpha, rel=0.05)
    assert noisy_fit.beta == pytest.approx(CHINCHILLA.beta, rel=0.05)
    assert noisy_fit.E == pytest.approx(CHINCHILLA.E, rel=0.05)


def test_bootstrap_interval_covers_truth(noisy, noisy_fit):
    replicates = bootstrap_laws({"x": noisy}, {"x": noisy_fit}, samples=30, seed=0, starts=2)
    assert replicates[:2] == bootstrap_laws({"x": noisy}, {"x": noisy_fit}, samples=2, seed=0, starts=2)  # seeded
    for name in ("E", "alpha", "beta"):
        interval = estimate(getattr(noisy_fit, name), [getattr(r["x"], name) for r in replicates], 0.9)
        assert interval.low < getattr(CHINCHILLA, name) < interval.high, (name, interval)
        assert interval.high - interval.low > 0  # the replicates differ: the records were resampled


def test_bootstrap_in_worker_processes_gives_the_same_pairs(noisy, noisy_fit):
    other = _ladder(_efficient(CHINCHILLA, 1.5), "y", 2e-3, seed=1)
    groups, laws = {"x": noisy, "y": other}, {"x": noisy_fit, "y": fit_law(other, starts=2)}
    serial = bootstrap_laws(groups, laws, samples=3, seed=0, starts=2)
    assert bootstrap_laws(groups, laws, samples=3, seed=0, starts=2, workers=2) == serial


def test_a_refit_to_few_sizes_stays_finite():
    """A bootstrap resample of a first ladder run (two points at 0.77M, repeated, and one at 3.0M) started from the
    fit to all its points, whose coefficient A is huge, used to run b and beta off together until exp(b) overflowed;
    the box keeps the law finite and still through the points."""
    small, large = (765542, 7651328, 3.9876816272735596), (765542, 30621696, 2.8021905422210693)
    points = [small, large, large, small, large, (2964696, 29655040, 2.3661909103393555)]
    records = [Record("hybrid", n, d, 6 * n * d, loss) for n, d, loss in points]
    start = LossLaw(E=1.8111095550011733, A=72924519340.27281, alpha=1.8988248853266343, B=1734488.3779589513,
                    beta=0.8733355597217777)  # fmt: skip
    law = fit_law(records, initial=start)
    assert all(math.isfinite(v) for v in dataclasses.astuple(law)) and law.alpha <= 5 and law.beta <= 5
    assert all(abs(math.log(law.loss(r.params, r.tokens) / r.loss)) < 0.05 for r in records)


def test_a_law_on_the_edge_of_the_box_gives_limits_not_errors():
    """A refit can end at an exponent of 0, where its term is a constant: the tokens for a loss and the compute-optimal
    split are then the limits, not a division by zero."""
    flat_data = dataclasses.replace(CHINCHILLA, beta=0.0)  # loss = floor(N) + B at every D
    floor = flat_data.floor(1e8)
    assert flat_data.tokens_for_loss(1e8, floor + flat_data.B + 0.1) == 0.0
    assert flat_data.tokens_for_loss(1e8, floor + flat_data.B - 0.1) == math.inf
    n, d = flat_data.compute_optimal(1e21, 6.0)
    assert (n, d) == (math.inf, 0.0) and flat_data.loss(n, d) == pytest.approx(CHINCHILLA.E + CHINCHILLA.B)
    flat_size = dataclasses.replace(CHINCHILLA, alpha=0.0)
    n, d = flat_size.compute_optimal(1e21, 6.0)
    assert (n, d) == (0.0, math.inf) and flat_size.loss(n, d) == pytest.approx(CHINCHILLA.E + CHINCHILLA.A)
    assert dataclasses.replace(CHINCHILLA, beta=1e-3).tokens_for_loss(1e8, 2.5) == math.inf  # past a float's range


def test_compute_optimal_minimises_loss_at_fixed_compute():
    compute, k = 1e21, 6.0
    n, d = CHINCHILLA.compute_optimal(compute, k)
    assert k * n * d == pytest.approx(compute)
    sizes = n * np.geomspace(0.5, 2.0, 2001)
    scanned = sizes[np.argmin(CHINCHILLA.loss(sizes, compute / (k * sizes)))]
    assert n == pytest.approx(scanned, rel=1e-3)


@pytest.mark.parametrize("n", [1e8, 7e9])
@pytest.mark.parametrize("target_loss", [None, 2.5])
def test_savings_of_a_token_multiplier(n, target_loss):
    # A candidate whose tokens are each worth s of the reference's needs 1/s of its tokens for any loss.
    s = 1.6
    savings = token_savings(_efficient(CHINCHILLA, s), CHINCHILLA, n, target_loss)
    assert savings.ratio == pytest.approx(1 - 1 / s, rel=1e-9)
    if target_loss is None:
        assert savings.target_loss == pytest.approx(CHINCHILLA.loss(n, 20 * n))
        assert savings.reference_tokens == pytest.approx(20 * n)


def test_savings_with_different_data_exponents():
    # Same E, A, alpha: B_Y / D_Y^beta_Y = B_X / D_X^beta_X at matched loss.
    candidate = dataclasses.replace(CHINCHILLA, B=900.0, beta=0.33)
    n, d_reference = 7e9, 20 * 7e9
    d_candidate = (candidate.B * d_reference**CHINCHILLA.beta / CHINCHILLA.B) ** (1 / candidate.beta)
    assert token_savings(candidate, CHINCHILLA, n).ratio == pytest.approx(1 - d_candidate / d_reference, rel=1e-9)


def test_savings_from_noiseless_fits():
    s = 1.5
    candidate = fit_law(_ladder(_efficient(CHINCHILLA, s), "hybrid"))
    reference = fit_law(_ladder(CHINCHILLA, "transformer"))
    for n in (SIZES[-1], 7e9):
        assert token_savings(candidate, reference, n).ratio == pytest.approx(1 - 1 / s, abs=1e-3)


def _floor_above_target() -> LossLaw:
    """A candidate whose loss floor at 7e9 parameters lies above the loss CHINCHILLA reaches with 20 N tokens."""
    return dataclasses.replace(CHINCHILLA, E=CHINCHILLA.E + 0.5)


def test_unreachable_target_is_reported():
    candidate = _floor_above_target()
    savings = token_savings(candidate, CHINCHILLA, 7e9)
    assert candidate.floor(7e9) > savings.target_loss
    assert savings.candidate_tokens == math.inf and not savings.candidate_reaches
    assert savings.ratio == -math.inf
    assert "unreachable by the candidate" in savings.describe()
    # A stated target below both floors: neither reaches it, and the ratio is undefined rather than a number.
    neither = token_savings(candidate, CHINCHILLA, 7e9, target_loss=1.0)
    assert math.isnan(neither.ratio) and "unreachable by the candidate and the reference" in neither.describe()
    # Only the candidate reaches it: the reference would need infinitely many tokens, all of them saved.
    assert token_savings(CHINCHILLA, candidate, 7e9, target_loss=2.3).ratio == 1.0


def test_report_says_when_the_target_is_out_of_reach():
    laws = {"hybrid": _floor_above_target(), "transformer": CHINCHILLA}
    analysis = Analysis(
        groups={arch: _ladder(law, arch) for arch, law in laws.items()},
        laws=laws,
        replicates=[laws] * 4,
        candidate="hybrid",
        reference="transformer",
        target_loss=None,
        confidence=0.9,
    )
    extrapolated = analysis.savings(7e9)
    assert extrapolated.unreachable_fraction == 1.0 and extrapolated.ratio.low == -math.inf
    row = next(line for line in markdown(analysis, 7e9, 1e21, []).splitlines() if "(extrapolated)" in line)
    assert "| ∞ |" in row and "unreachable by the candidate" in row and row.endswith("| 100.0% |")


@pytest.fixture(scope="module")
def cli():
    return load_tool("scaling_fit")


def _write_rungs(path: pathlib.Path) -> None:
    ladders = [
        _ladder(_efficient(CHINCHILLA, 1.5), "hybrid", 2e-3, seed=1, flops_per_param_token=6.2),
        _ladder(CHINCHILLA, "transformer", 2e-3, seed=2, flops_per_param_token=6.6),
    ]
    rows = [dataclasses.asdict(record) | {"step": 1000} for ladder in ladders for record in ladder]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_cli_writes_table_and_plots(cli, tmp_path):
    _write_rungs(tmp_path / "rungs.jsonl")
    out = tmp_path / "fit"
    args = ["--records", str(tmp_path / "rungs.jsonl"), "--out", str(out), "--candidate", "hybrid"]
    assert cli.main([*args, "--reference", "transformer", "--bootstrap", "6", "--starts", "2"]) == 0
    report = (out / cli.REPORT).read_text()
    lines = report.splitlines()
    for arch in ("hybrid", "transformer"):
        assert any(line.startswith(f"| {arch} | 18 | 6 | ") for line in lines), arch
    assert any(line.startswith("| 6.4e+08 (largest measured) |") and "% [" in line for line in lines)
    assert any(line.startswith("| 7e+09 (extrapolated) |") for line in lines)
    assert any(line.startswith("| 1 | hybrid |") for line in lines)  # saves tokens and costs fewer FLOPs a token
    assert "6 paired bootstrap replicates" in report
    for plot in (cli.LOSS_PLOT, cli.SAVINGS_PLOT):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--candidate", "gdn"], "no records of gdn; the records have hybrid, transformer"),
        (["--candidate", "hybrid", "--bootstrap", "0"], "at least one bootstrap replicate, not 0"),
        (["--candidate", "hybrid", "--workers", "0"], "at least one worker process, not 0"),
    ],
)
def test_cli_rejects_bad_requests(cli, tmp_path, capsys, flags, message):
    _write_rungs(tmp_path / "rungs.jsonl")
    args = ["--records", str(tmp_path / "rungs.jsonl"), "--out", str(tmp_path / "fit"), "--reference", "transformer"]
    assert cli.main([*args, "--bootstrap", "2", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "fit").exists()


def test_read_records_names_the_bad_line(tmp_path):
    good = {"arch": "x", "params": 1e8, "tokens": 2e9, "flops": 1.2e18, "loss": 3.0, "step": 7}
    path = tmp_path / "rungs.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n")
    assert read_records(path) == [Record("x", 1e8, 2e9, 1.2e18, 3.0)] * 2  # blank lines skipped, other keys ignored
    for bad, message in (({"flops": None}, "missing flops"), ({"loss": 0.0}, "loss must be finite and positive")):
        row = {key: value for key, value in (good | bad).items() if value is not None}
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(ValueError, match=f"rungs.jsonl:2: {message}"):
            read_records(path)
