"""Command line: `python -m hybridlm.train --config=<experiment or file> --workdir=DIR [--config.<key>=<value> ...]`.

Trains the named experiment (see `python -m experiments`), resuming from the latest checkpoint in DIR.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "An experiment name from `python -m experiments`, or the path of a config file."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the run's config.json live.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _resolve_experiment(argv: list[str]) -> list[str]:
    """Replaces the experiment name in `--config=NAME` (or `--config NAME`) with its file, which config_flags loads."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value, prefix, index = arg.split("=", 1)[1], "--config=", i
        elif arg == "--config" and i + 1 < len(argv):
            value, prefix, index = argv[i + 1], "", i + 1
        else:
            continue
        if not value.endswith(".py"):
            argv[index] = f"{prefix}{experiments.path(value)}"
    return argv


def _unknown_key_message(argv: list[str], error: Exception) -> str:
    key = re.findall(r"[A-Za-z_]\w*", str(error))[0]
    suggestion = re.search(r'Did you mean "(\w+)"', str(error))
    hint = f"did you mean {suggestion.group(1)!r}? " if suggestion else ""
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if o.split(".")[-1] == key), ", ".join(overrides))
    return f"{culprit}: the config has no key {key!r}; {hint}(keys and defaults: python -m experiments --show=NAME)"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with experiment names and one-line errors for bad flags or config overrides."""
    try:
        return flags.FLAGS(_resolve_experiment(argv))
    except experiments.UnknownExperimentError as e:
        _fail(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of a missing key
        _fail(_unknown_key_message(argv, e))
    except flags.Error as e:
        _fail(f"{e}".splitlines()[0] + " (keys and defaults: python -m experiments --show=NAME)")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Keeps orbax's per-save INFO lines off the terminal.
    if _CONFIG.value is None or _WORKDIR.value is None:
        _fail("both --config (an experiment name from `python -m experiments`) and --workdir are required")
    from hybridlm.model.config import ConfigError  # Imported late: flag errors come back before jax starts up.
    from hybridlm.trainer import Trainer

    try:
        trainer = Trainer(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:  # ConfigError and data errors: raised before anything compiles.
        _fail(str(e))
    try:
        trainer.train()
    except ConfigError as e:  # A checkpoint whose data no longer matches: raised before the first step.
        _fail(str(e))
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; rerun the same command to resume from the latest checkpoint in {_WORKDIR.value}",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
