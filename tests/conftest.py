import os

import pytest
import torch

# Determinism and a predictable thread count on the 2-core CI machines.
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_case():
    from tests.cases import BACKBONE_CASES

    return BACKBONE_CASES[0]


def pytest_collection_modifyitems(config, items):
    """Campaign tests (the full hostile-input runs) run only when `-m campaign` selects them;
    (method, backbone) pairs of the case table that the method refuses by design are skipped."""
    from tests.cases import inapplicable

    for item in items:
        reason = inapplicable(getattr(getattr(item, "callspec", None), "params", {}))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
    if "campaign" in (config.getoption("markexpr") or ""):
        return
    campaign = [item for item in items if "campaign" in item.keywords]
    if campaign:
        config.hook.pytest_deselected(items=campaign)
        items[:] = [item for item in items if "campaign" not in item.keywords]
