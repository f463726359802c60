"""Lists the registered experiments: `python -m experiments [--show=NAME [--config.<key>=<value> ...] [--plan]]`.

`--show=NAME` prints the experiment's full config, with any `--config.<key>=<value>` overrides given after it applied;
`--plan` prints its memory plan instead (hybridlm.memory_plan): bytes per device of parameters, gradients, optimizer
state and activations on `--devices` devices of `--device_kind`, and whether that fits.
"""

import re
import sys

from absl import app, flags
from ml_collections import config_flags

from hybridlm import named_configs
from hybridlm.model import ModelConfig, count_params

from . import get_config, names

_SHOW = flags.DEFINE_string("show", None, "Print this experiment's full config instead of the list.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Set by --show to the experiment's file; its keys take overrides: --config.<key>=<value>."
)
_PLAN = flags.DEFINE_bool("plan", False, "With --show: print the experiment's memory plan per device instead.")
_DEVICES = flags.DEFINE_integer("devices", None, "--plan: the number of devices (default: the devices present).")
_DEVICE_KIND = flags.DEFINE_string(
    "device_kind", None, '--plan: the device kind as jax names it, e.g. "NVIDIA H200" (default: the devices present).'
)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _with_config_file(argv: list[str]) -> list[str]:
    """Adds `--config=<file of NAME>[:ARG]` right after `--show=NAME[:ARG]` (or `--show NAME[:ARG]`), so that
    config_flags loads the experiment and the `--config.<key>` overrides after it apply; a config file's path is
    checked first."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--show="):
            name, at = arg.split("=", 1)[1], i + 1
        elif arg == "--show" and i + 1 < len(argv):
            name, at = argv[i + 1], i + 2
        else:
            continue
        return [*argv[:at], f"--config={named_configs.resolve(name)}", *argv[at:]]
    return argv


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for an unknown experiment, flag or config key."""
    show = next((i for i, arg in enumerate(argv) if arg == "--show" or arg.startswith("--show=")), None)
    first_override = next((i for i, arg in enumerate(argv) if arg.startswith("--config.")), None)
    if first_override is not None and (show is None or first_override < show):
        override = argv[first_override].split("=", 1)[0]
        _fail(f"{override}: config overrides go after --show=NAME, the experiment they change")
    try:
        return flags.FLAGS(_with_config_file(argv))
    except named_configs.ConfigFileError as e:
        _fail(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an override of a missing key
        _fail(_unknown_key_message(argv, str(e)))
    except flags.Error as e:
        message = str(e).splitlines()[0]
        _fail(_unknown_key_message(argv, message) if "flag 'config." in message else message)


def _unknown_key_message(argv: list[str], error: str) -> str:
    """`--config.<key>: the config has no key ...` for an override of a key the experiment does not have."""
    overrides = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    named = re.search(r"'config\.([\w.]+)'", error)
    key = named.group(1).split(".")[-1] if named else (re.findall(r"[A-Za-z_]\w*", error) or ["?"])[0]
    culprit = next((o for o in overrides if o.split(".")[-1] == key), ", ".join(overrides))
    return f"{culprit}: the config has no key {key!r} (keys and defaults: python -m experiments --show=NAME)"


def main(argv: list[str]) -> None:
    del argv
    if _PLAN.value:
        _plan()
        return
    if _SHOW.value:
        _show(_CONFIG.value)
        return
    print(f"{'experiment':<18} {'params':>8}  description")
    for name in names():
        config = get_config(name)
        params = count_params(ModelConfig.from_config(config.model))
        print(f"{name:<18} {_human(params):>8}  {config.description}")


def _plan() -> None:
    """Prints the memory plan of the --show experiment (hybridlm.memory_plan)."""
    if not _SHOW.value:
        _fail("--plan needs --show=NAME: the experiment to plan, e.g. --show=olmo_hybrid_7b --plan")
    import jax  # Imported late: flag errors come back before jax starts up.
    from absl import logging

    from hybridlm import memory_plan
    from hybridlm.model.config import ConfigError

    logging.set_verbosity(logging.WARNING)  # Keeps jax's INFO lines about absent backends off the terminal.
    device_count = jax.device_count() if _DEVICES.value is None else _DEVICES.value
    device_kind = jax.devices()[0].device_kind if _DEVICE_KIND.value is None else _DEVICE_KIND.value
    if device_count < 1:
        _fail(f"--devices={device_count} must be positive")
    name = _SHOW.value.removesuffix(".py").rsplit("/", 1)[-1]
    try:
        plan = memory_plan.plan(_CONFIG.value, device_kind, device_count, name=name)
    except ConfigError as e:
        _fail(str(e))
    print(memory_plan.format_plan(plan))


def _show(config) -> None:
    """Prints `config`, derived fields resolved, then comment lines with its size and cost (hybridlm.summary); a
    model that cannot be built is one `error:` line instead."""
    from hybridlm import summary
    from hybridlm.model.config import ConfigError

    try:
        sizes = summary.size_lines(ModelConfig.from_config(config.model), config.data.seq_len)
    except ConfigError as e:
        _fail(str(e))
    print(config)
    print("\n".join(f"# {line}" for line in sizes))


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
