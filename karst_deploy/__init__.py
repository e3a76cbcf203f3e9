"""karst-deploy: fold KARST-style adapters into ViTs and deploy them with proven parity.

The public API is imported lazily so that ``import karst_deploy`` (and the CLI's
``--help``) stay fast and work without the optional runtimes.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "karst_deploy.models",
    "BackboneSpec": "karst_deploy.models",
    "KarstConfig": "karst_deploy.adapters",
    "KAdaptationConfig": "karst_deploy.adapters",
    "LoraConfig": "karst_deploy.adapters",
    "LinearConfig": "karst_deploy.adapters",
    "add_adapters": "karst_deploy.adapters",
    "save_adapters": "karst_deploy.adapters",
    "load_adapters": "karst_deploy.adapters",
    "load_adapted_model": "karst_deploy.adapters",
    "merge": "karst_deploy.adapters",
    "count_trainable": "karst_deploy.adapters",
    "factorization": "karst_deploy.adapters",
    "KarstDeployError": "karst_deploy.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'karst_deploy' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
