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
