"""SPT placement: sensitivity scores and the budget allocation they drive (METHODS.md, SPT)."""

from karst_deploy.placement.allocation import add_spt_adapters, allocate, parse_budget
from karst_deploy.placement.request import SptRequest
from karst_deploy.placement.sensitivity import (
    Sensitivity,
    check_scores_fit,
    compute_sensitivity,
    load_scores,
    save_scores,
    sensitivity_for_backbone,
)

__all__ = [
    "Sensitivity",
    "SptRequest",
    "add_spt_adapters",
    "allocate",
    "check_scores_fit",
    "compute_sensitivity",
    "load_scores",
    "parse_budget",
    "save_scores",
    "sensitivity_for_backbone",
]
