"""Hugging Face interoperability with transformers' `olmo_hybrid` and `olmo3` checkpoints.

- `hybridlm.hf.export.export_workdir(workdir, out_dir)` (CLI: `tools/export_hf.py`): a training run -> a Hugging
  Face directory that `AutoModelForCausalLM.from_pretrained` loads;
- `hybridlm.hf.load`: a Hugging Face directory -> our run config (`run_config_from_hf`, `with_hf_architecture`) and
  params (`load_hf_params`), to continue training or score;
- `hybridlm.hf.convert`: the config and tensor mapping both ways.

`hybridlm.hf.export` is not imported here: it builds on `hybridlm.api`, which builds on this package.
"""

from hybridlm.hf.convert import HFFormatError

__all__ = ["HFFormatError"]
