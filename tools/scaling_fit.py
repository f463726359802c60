"""Fits loss scaling laws to a ladder's results and writes the fit table and plots.

    python tools/scaling_fit.py --records RUNGS.jsonl --out DIR --candidate ARCH --reference ARCH
        [--target_loss L] [--extrapolate_n 7e9] [--compute FLOPS] [--bootstrap 1000] [--seed 0] [--starts 8]
        [--workers CPUS]

RUNGS.jsonl holds one finished run a line: arch, params (non-embedding N), tokens (D), flops (training FLOPs) and
loss (final held-out loss); other keys are ignored. Fits L(N, D) = E + A / N^alpha + B / D^beta per architecture
(Chinchilla approach 3) with paired bootstrap intervals, and writes into DIR: fit.md (the laws, the tokens
--candidate saves against --reference at matched loss at the largest measured N and at --extrapolate_n, and the
architectures ranked by predicted loss at --compute), loss_vs_flops.png and savings_vs_n.png.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for uninstalled checkouts

REPORT = "fit.md"
LOSS_PLOT = "loss_vs_flops.png"
SAVINGS_PLOT = "savings_vs_n.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help="JSONL of rung results (arch, params, tokens, flops, loss)")
    parser.add_argument("--out", required=True, help="directory for fit.md and the plots (created if missing)")
    parser.add_argument("--candidate", required=True, help="the architecture whose token savings are reported")
    parser.add_argument("--reference", required=True, help="the architecture it is compared with")
    parser.add_argument(
        "--target_loss",
        type=float,
        default=None,
        help="loss the savings are matched at (default: the reference's at 20 tokens a parameter, at each N)",
    )
    parser.add_argument("--extrapolate_n", type=float, default=7e9, help="N the savings are extrapolated to")
    parser.add_argument(
        "--compute", type=float, default=None, help="FLOPs of the ranking (default: the records' largest)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--starts", type=int, default=None, help="grid points each fit starts from (default: 8)")
    parser.add_argument("--confidence", type=float, default=0.9, help="coverage of the intervals")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes the bootstrap refits run in (default: one a CPU)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imported late: argument errors come back before scipy and matplotlib load.
    from hybridlm.scaling.analysis import analyse
    from hybridlm.scaling.fit import DEFAULT_STARTS
    from hybridlm.scaling.plots import plot_loss_vs_flops, plot_savings
    from hybridlm.scaling.records import read_records
    from hybridlm.scaling.report import markdown

    try:
        records = read_records(args.records)
        analysis = analyse(
            records,
            args.candidate,
            args.reference,
            target_loss=args.target_loss,
            samples=args.bootstrap,
            seed=args.seed,
            starts=DEFAULT_STARTS if args.starts is None else args.starts,
            confidence=args.confidence,
            workers=args.workers,
        )
    except (OSError, ValueError) as e:  # unreadable or malformed records, an architecture with none: one line.
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    compute = max(r.flops for r in records) if args.compute is None else args.compute
    plot_loss_vs_flops(analysis, out / LOSS_PLOT)
    plot_savings(analysis, args.extrapolate_n, out / SAVINGS_PLOT)
    (out / REPORT).write_text(markdown(analysis, args.extrapolate_n, compute, [LOSS_PLOT, SAVINGS_PLOT]))
    print(f"wrote {out / REPORT}, {out / LOSS_PLOT} and {out / SAVINGS_PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
