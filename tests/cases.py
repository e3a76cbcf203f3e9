"""Central tables of test cases: every adapter check runs over METHOD_CASES × BACKBONE_CASES.

The method table is derived from the adapter registry (`karst_deploy.adapters.registry`);
the backbones are a table.

Backbones are tiny versions of real timm architectures (random weights, 32×32 inputs) so
the whole table runs in seconds on two CPU cores, while keeping the properties that
matter: widths 192/384/768, qkv with and without bias, Swin's windowed attention, and a
width (100) that the Kronecker factor 8 does not divide.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import karst_deploy as kd
from karst_deploy.adapters import AdapterConfig
from karst_deploy.adapters.registry import method_options, standalone_configs, structured_configs


@dataclass(frozen=True, eq=False)  # identity hash: cases are module-level singletons
class BackboneCase:
    id: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        """A fresh copy of this backbone with fixed random weights."""
        return copy.deepcopy(_cached_backbone(self))


@functools.cache
def _cached_backbone(case: BackboneCase) -> torch.nn.Module:
    torch.manual_seed(0)
    return kd.create_model(case.name, **case.kwargs)


BACKBONE_CASES = [
    BackboneCase(
        "vit-192", "vit_tiny_patch16_224", dict(num_classes=10, img_size=32, patch_size=8, depth=2)
    ),
    BackboneCase(
        "vit-384-noqkvbias",
        "vit_small_patch16_224",
        dict(num_classes=7, img_size=32, patch_size=16, depth=1, qkv_bias=False),
    ),
    BackboneCase(
        "deit-768",
        "deit_base_patch16_224",
        dict(num_classes=5, img_size=32, patch_size=16, depth=1),
    ),
    BackboneCase(
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(
            num_classes=6, img_size=32, window_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4]
        ),
    ),
    BackboneCase(
        "vit-100-unfactorable",
        "vit_tiny_patch16_224",
        dict(num_classes=3, img_size=32, patch_size=16, depth=1, embed_dim=100, num_heads=4),
    ),
]

# Hyper-parameters per registered method for the tiny backbones, with its variants (case id ->
# config). The method table itself is derived from the adapter registry: every registered
# method that adapts Linear layers (its config has `targets`) is a case, with its config's
# defaults when it has no entry here, so a new method is tested by registering it.
METHOD_VARIANTS: dict[str, dict[str, AdapterConfig]] = {
    "karst": {
        "karst-channel": kd.KarstConfig(rescale="channel"),
        "karst-scalar": kd.KarstConfig(rescale="scalar"),
        "karst-fused": kd.KarstConfig(qkv_layout="fused"),  # adapters written before split qkv
    },
    "lora": {"lora": kd.LoraConfig(rank=4, alpha=8.0)},
    "kadaptation": {
        "kadaptation": kd.KAdaptationConfig(kernels=4, scale=0.5),
        "kadaptation-pevit": kd.KAdaptationConfig(kernels=4, scale=0.5, structure="pevit"),
    },
}
LAYER_METHODS = [name for name in standalone_configs if "targets" in method_options(name)]
METHOD_CASES: dict[str, AdapterConfig] = {
    case: config
    for name in LAYER_METHODS
    for case, config in METHOD_VARIANTS.get(name, {name: standalone_configs[name]()}).items()
}

method_params = pytest.mark.parametrize("method", list(METHOD_CASES))

# (method, backbone) pairs a method refuses by design: the table's tests skip them (conftest),
# and the refusal itself is tested beside the method.
INAPPLICABLE: dict[tuple[str, str], str] = {
    ("kadaptation-pevit", "vit-384-noqkvbias"): "PEViT adds a bias to the q and v outputs; "
    "this qkv has none to fold it into (refusal: tests/adapters/test_kadaptation.py)",
}


def inapplicable(params: dict[str, Any]) -> str | None:
    """Why a test's (method, backbone) parameters are a pair the method refuses, or None."""
    backbone = params.get("backbone")
    return INAPPLICABLE.get((params.get("method"), getattr(backbone, "id", None)))


# SPT places its modules per model, so an SPT case is the structured method's config (its
# first variant above), which `spt_config` turns into a placement for each backbone;
# `adapted` takes these names too. Derived from the registry's structurable methods.
SPT_CASES: dict[str, AdapterConfig] = {
    f"spt-{name}": next(iter(METHOD_VARIANTS.get(name, {name: config()}).values()))
    for name, config in structured_configs.items()
}
spt_params = pytest.mark.parametrize("method", list(SPT_CASES))
backbone_params = pytest.mark.parametrize("backbone", BACKBONE_CASES, ids=lambda c: c.id)


def randomize_adapters(model: torch.nn.Module, seed: int = 1, std: float = 0.1) -> torch.nn.Module:
    """Give every trainable tensor (adapters and head) random non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_(noise * std)
    return model


def spt_config(model: torch.nn.Module, structured: AdapterConfig) -> kd.adapters.SptConfig:
    """An official-layout SPT placement for `model` exercising every kind of part.

    Synthetic scores: the k block of the first qkv is uniformly the most sensitive, so it
    alone crosses P_struct/σ (a structured module on a single block of the fused qkv); the
    first LayerNorm weight too, so it is tuned whole; everything else holds lower random
    scores and shares a small sparse budget (matrices and vectors). The cls token, where
    the backbone has one, is trained. The exact rule spends the budget within 2 %.
    """
    from karst_deploy.adapters.spt import block_linear
    from karst_deploy.placement import allocate
    from karst_deploy.placement.allocation import structured_size
    from karst_deploy.placement.sensitivity import candidate_parameters

    generator = torch.Generator().manual_seed(0)
    candidates = candidate_parameters(model)
    scores = {name: torch.rand(p.shape, generator=generator) for name, p in candidates.items()}
    qkv = next(name for name in scores if name.endswith("attn.qkv.weight"))
    rows = scores[qkv].shape[0] // 3
    scores[qkv][rows : 2 * rows] += 1.0
    norm = next(name for name in scores if name.endswith("norm1.weight"))
    scores[norm] += 1.0
    path = qkv.removesuffix(".weight")
    block = block_linear(model.get_submodule(path), 3)
    token = dict(model.named_parameters()).get("cls_token")
    budget = (
        structured_size(path, block, structured)
        + scores[norm].numel()
        + (0 if token is None else token.numel())
        + 20 * len(scores)
    )
    return allocate(model, scores, budget, structured=structured, rule="exact")


@functools.cache
def spt_case_config(backbone: BackboneCase, method: str) -> kd.adapters.SptConfig:
    """`spt_config` for an SPT case on a backbone case (computed once per session)."""
    return spt_config(_cached_backbone(backbone), SPT_CASES[method])


def adapted(backbone: BackboneCase, method: str, seed: int = 1) -> torch.nn.Module:
    """The backbone with the method's adapters, set to random non-zero values, in eval mode
    (what merge folds: training-only parts such as PEViT's dropout are off)."""
    spt = method in SPT_CASES
    config = spt_case_config(backbone, method) if spt else METHOD_CASES[method]
    model = kd.add_adapters(backbone.build(), config)
    return randomize_adapters(model, seed).eval()


def images(backbone: BackboneCase, batch: int = 3, seed: int = 0) -> torch.Tensor:
    size = backbone.kwargs.get("img_size", 224)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class RunnerCase:
    """A runtime behind the Runner interface, made from a PyTorch model and its ONNX export."""

    id: str
    make: Any  # (model: torch.nn.Module, onnx_path: Path) -> Runner
    marks: tuple[Any, ...] = ()
    #: Max abs diff to PyTorch, relative to the logit scale (fp32 everywhere: no TF32).
    atol_scale: float = 1e-4


def _torch_runner(model, onnx_path):
    from karst_deploy.backends.torch import TorchRunner

    return TorchRunner(model)


def _onnxruntime_runner(model, onnx_path):
    from karst_deploy.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(onnx_path)


def _from_file(name):
    """The registered runner `name` on the ONNX file, as bench and verify-parity open it."""

    def make(model, onnx_path):
        from karst_deploy.backends import runner_class

        return runner_class(name).from_file(onnx_path)

    return make


def _needs_provider(provider: str) -> Any:
    import onnxruntime

    return pytest.mark.skipif(
        provider not in onnxruntime.get_available_providers(),
        reason=f"needs ONNX Runtime's {provider} (onnxruntime-gpu and a CUDA GPU)",
    )


def _needs_tensorrt() -> tuple[Any, ...]:
    from tests.backends.tensorrt.needs import MISSING

    return (
        pytest.mark.tensorrt,
        pytest.mark.gpu,
        pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
    )


#: Every registered runner (tests/backends/test_runners.py checks that none is missing).
RUNNER_CASES = [
    RunnerCase("torch", _torch_runner),
    RunnerCase("onnxruntime", _onnxruntime_runner),
    RunnerCase(
        "onnxruntime-cuda",
        _from_file("onnxruntime-cuda"),
        (pytest.mark.gpu, _needs_provider("CUDAExecutionProvider")),
    ),
    RunnerCase(
        "onnxruntime-tensorrt",
        _from_file("onnxruntime-tensorrt"),
        (pytest.mark.tensorrt, pytest.mark.gpu, _needs_provider("TensorrtExecutionProvider")),
    ),
    RunnerCase("tensorrt", _from_file("tensorrt"), _needs_tensorrt()),
]
runner_params = pytest.mark.parametrize(
    "runner_case", [pytest.param(c, id=c.id, marks=c.marks) for c in RUNNER_CASES]
)


# Hugging Face PEFT adapters (karst_deploy.adapters.peft_format): config class and arguments,
# made with PEFT itself by `peft_adapter`; HEAD stands for the backbone's classifier module.
HEAD = "<head>"
PEFT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": (
        "LoraConfig",
        dict(r=4, lora_alpha=8, target_modules=["qkv", "attn.proj", "fc1", "fc2"],
             modules_to_save=[HEAD]),
    ),
    "lora-rslora-patterns": (
        "LoraConfig",
        dict(r=3, lora_alpha=5, use_rslora=True, target_modules=["qkv", "fc2"],
             rank_pattern={"fc2": 2}, alpha_pattern={"qkv": 7}, bias="lora_only"),
    ),
    "lora-bias-all": (
        "LoraConfig",
        dict(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["qkv"], bias="all",
             lora_bias=True),
    ),
    "lora-layers": (
        "LoraConfig",
        dict(r=2, lora_alpha=2, target_modules=["qkv", "fc1"], layers_to_transform=[0],
             layers_pattern="blocks", exclude_modules=["fc1"]),
    ),
    "dora": (
        "LoraConfig",
        dict(r=4, lora_alpha=8, use_dora=True, target_modules=["qkv", "fc1"],
             modules_to_save=[HEAD]),
    ),
    "lokr-decomposed": (
        "LoKrConfig",
        dict(r=2, alpha=4, rank_dropout=0.1, target_modules=["qkv", "fc1"], decompose_both=True,
             decompose_factor=8),
    ),
    "lokr-whole": ("LoKrConfig", dict(r=16, alpha=8, target_modules=["fc2"])),
    "loha": (
        "LoHaConfig",
        dict(r=2, alpha=4, target_modules=["qkv", "fc2"], modules_to_save=[HEAD]),
    ),
    "ia3": (
        "IA3Config",
        dict(target_modules=["qkv", "fc1", "fc2"], feedforward_modules=["fc2"],
             modules_to_save=[HEAD]),
    ),
}  # fmt: skip
PEFT_BACKBONES = [BACKBONE_CASES[0], BACKBONE_CASES[3]]  # ViT and Swin
peft_backbone_params = pytest.mark.parametrize("backbone", PEFT_BACKBONES, ids=lambda c: c.id)
peft_params = pytest.mark.parametrize("peft_case", list(PEFT_CASES))


def peft_adapter(backbone: BackboneCase, case: str, directory: Any, seed: int = 1) -> Any:
    """Make the PEFT case on the backbone with PEFT itself, give every trainable tensor random
    non-zero values (PEFT zero-initialises B and sets IA³ to ones), save_pretrained it."""
    import warnings

    import peft

    from karst_deploy.models import classifier_parameter_names

    model = backbone.build()
    head = classifier_parameter_names(model)[0].rpartition(".")[0]  # e.g. head, head.fc
    name, kwargs = PEFT_CASES[case]
    kwargs = {k: [head] if v == [HEAD] else v for k, v in kwargs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, getattr(peft, name)(**kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in wrapped.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT mistakes lora_B's 1-D bias for a sharded tensor
        wrapped.save_pretrained(str(directory))
    return directory


def peft_backbone_args(backbone: BackboneCase) -> dict[str, Any]:
    """`load_peft_model` keyword arguments that rebuild the case's backbone."""
    kwargs = dict(backbone.kwargs)
    return dict(
        num_classes=kwargs.pop("num_classes"), img_size=kwargs.pop("img_size"), model_kwargs=kwargs
    )
