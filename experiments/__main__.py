"""Lists the registered experiments: `python -m experiments [--show=NAME]`."""

from absl import app, flags

import experiments
from hybridlm.model import ModelConfig, count_params

_SHOW = flags.DEFINE_string("show", None, "Print this experiment's full config instead of the list.")


def main(argv: list[str]) -> None:
    del argv
    if _SHOW.value:
        print(experiments.get_config(_SHOW.value))
        return
    print(f"{'experiment':<18} {'params':>8}  description")
    for name in experiments.names():
        config = experiments.get_config(name)
        params = count_params(ModelConfig.from_config(config.model))
        print(f"{name:<18} {_human(params):>8}  {config.description}")


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


if __name__ == "__main__":
    app.run(main)
