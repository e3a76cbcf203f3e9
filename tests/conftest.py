import functools
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


@pytest.fixture(scope="session")
def base_export(tmp_path_factory):
    """`base_export(case)`: the plain backbone of a `BackboneCase` exported to ONNX, once per
    session (a dynamo export costs seconds; tests share these files and must not change them)."""
    from karst_deploy.export import export_model

    root = tmp_path_factory.mktemp("base-exports")

    @functools.cache
    def make(case):
        return export_model(case.build(), root / f"{case.id}.onnx")

    return make


@pytest.fixture(scope="session")
def method_export(tmp_path_factory):
    """`method_export(method, unmerged=False)`: (adapter directory, ExportResult) of a method
    case on the tiny ViT (`tests.export.artifacts`), merged or unmerged, each made once per
    session (tests share these files and must not change them)."""
    from karst_deploy.export import export_onnx
    from tests.export.artifacts import save_adapter

    root = tmp_path_factory.mktemp("method-exports")

    @functools.cache
    def adapter(method):
        return save_adapter(root / method / "adapter", method)

    @functools.cache
    def make(method, unmerged=False):
        out = root / method / ("unmerged.onnx" if unmerged else "merged.onnx")
        return adapter(method), export_onnx(out, adapter=adapter(method), unmerged=unmerged)

    return make


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
