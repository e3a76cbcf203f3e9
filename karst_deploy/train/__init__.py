"""Training adapters on labelled images with the KARST recipe (single process or torchrun).

from karst_deploy.train import TrainConfig, train_adapters, adapter_config_for
config = TrainConfig(backbone="vit_base_patch16_224", data="my_images/",
                     adapter=adapter_config_for("karst", rank=8), checkpoint="in21k.npz")
result = train_adapters(config, out="runs/karst")   # adapter directory + train_log.json
"""

from karst_deploy.train.loop import TrainResult, evaluate, train_adapters
from karst_deploy.train.recipe import TrainConfig, adapter_config_for

__all__ = ["TrainConfig", "TrainResult", "adapter_config_for", "evaluate", "train_adapters"]
