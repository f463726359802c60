"""Loss scaling laws: fit L(N, D) = E + A / N^alpha + B / D^beta per architecture to the results of a ladder of
training runs (Hoffmann et al. 2022, "Chinchilla", approach 3, with the bootstrap intervals of Besiroglu et al. 2024),
and compare architectures by the tokens they need for the same loss and by their loss at a given compute.

N counts non-embedding parameters, D training tokens, L the final held-out loss. Needs the `scaling` extra (scipy,
matplotlib); tools/scaling_fit.py is the command line.
"""

from hybridlm.scaling.bootstrap import Estimate, bootstrap_laws, estimate
from hybridlm.scaling.fit import fit_law
from hybridlm.scaling.law import LossLaw
from hybridlm.scaling.ranking import rank_at_compute
from hybridlm.scaling.records import Record, group_by_arch, read_records
from hybridlm.scaling.savings import Savings, token_savings

__all__ = [
    "Estimate",
    "LossLaw",
    "Record",
    "Savings",
    "bootstrap_laws",
    "estimate",
    "fit_law",
    "group_by_arch",
    "rank_at_compute",
    "read_records",
    "token_savings",
]
