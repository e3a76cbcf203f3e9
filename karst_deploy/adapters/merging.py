"""``karst-deploy merge``: fold an adapter directory, ours or a PEFT one, into a checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from karst_deploy.errors import InputError

if TYPE_CHECKING:
    from karst_deploy.adapters.storage import MergedCheckpoint


@dataclass
class MergeOptions:
    """The backbone an adapter folds into. Our adapter directory records its backbone
    (`backbone` is then only checked); a PEFT one records none, so `img_size` and
    `model_kwargs` describe it."""

    backbone: str | None = None
    checkpoint: str | os.PathLike[str] | None = None
    pretrained: bool = False
    img_size: int | None = None
    model_kwargs: dict[str, Any] | None = None


def merge_adapter_directory(
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: MergeOptions,
    *,
    force: bool = False,
) -> MergedCheckpoint:
    """Merge `adapter` (ours or PEFT, told apart by its files) and write the checkpoint `out`."""
    from karst_deploy.adapters.peft_format import is_peft_directory, write_merged_peft_checkpoint
    from karst_deploy.adapters.storage import write_merged_checkpoint

    if is_peft_directory(adapter):
        return write_merged_peft_checkpoint(
            adapter,
            out,
            backbone=options.backbone,
            checkpoint=options.checkpoint,
            pretrained=options.pretrained,
            img_size=options.img_size,
            model_kwargs=options.model_kwargs,
            force=force,
        )
    if options.img_size is not None or options.model_kwargs is not None:
        raise InputError(
            "img_size and model_kwargs apply to PEFT adapters only; our adapter directory "
            "records its backbone.",
            parameters=("img_size", "model_kwargs"),
        )
    return write_merged_checkpoint(
        adapter,
        out,
        checkpoint=options.checkpoint,
        backbone=options.backbone,
        pretrained=options.pretrained,
        force=force,
    )
