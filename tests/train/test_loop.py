"""Training on the built-in digits: the loss drops, only trainable tensors move, the best
validation epoch is what gets saved, runs are reproducible, outputs are never clobbered."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import karst_deploy as kd
from karst_deploy.data import open_images
from karst_deploy.errors import InputError, OutputExistsError
from karst_deploy.train import TrainConfig, evaluate, train_adapters
from karst_deploy.train.log import LOG_FILE
from karst_deploy.train.loop import build_model, seed_everything
from tests.cases import METHOD_CASES
from tests.train.tiny import tiny_checkpoint, tiny_config

TRAIN_CASES = {**METHOD_CASES, "linear": kd.LinearConfig()}


def _initial_model(config: TrainConfig) -> torch.nn.Module:
    """The exact model `train_adapters` starts from (same seed, same construction order)."""
    seed_everything(config.seed)
    return build_model(config, open_images(config.data, "train", 16).num_classes)


@pytest.mark.parametrize("method", list(TRAIN_CASES))
def test_training_lowers_the_loss_and_moves_only_trainable_tensors(method):
    config = tiny_config(adapter=TRAIN_CASES[method])
    before = _initial_model(config)
    train = open_images(config.data, "train", 16)
    start_loss, _ = evaluate(before, torch.utils.data.TensorDataset(*train.batch()), 64, "cpu")

    result = train_adapters(config, progress=False)

    end_loss, _ = evaluate(result.model, torch.utils.data.TensorDataset(*train.batch()), 64, "cpu")
    assert end_loss < 0.9 * start_loss
    trainable = {n for n, p in before.named_parameters() if p.requires_grad}
    initial = before.state_dict()
    for name, tensor in result.model.state_dict().items():
        if name in trainable:
            assert not torch.equal(tensor, initial[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, initial[name]), f"frozen {name} changed"
    counts = result.log.trainable_parameters
    assert counts.total == sum(p.numel() for n, p in before.named_parameters() if n in trainable)
    assert (counts.adapter == 0) == (method == "linear")


def test_the_best_validation_epoch_is_saved_and_test_is_only_reported(tmp_path):
    config = tiny_config(epochs=4, checkpoint=str(tiny_checkpoint(tmp_path)))
    result = train_adapters(config, tmp_path / "run", progress=False)
    log = json.loads((tmp_path / "run" / LOG_FILE).read_text())
    assert log == json.loads(json.dumps(result.log.to_dict()))
    epochs = log["epochs"]
    assert len(epochs) == 4 and all(e["seconds"] > 0 for e in epochs)
    best = max(epochs, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert log["best_epoch"] == best["epoch"]
    assert log["recipe"]["weight_decay"] == pytest.approx(config.lr / 10)
    assert log["recipe"]["adapter"]["method"] == "karst"
    assert log["run"]["amp"] is None  # --amp is the default, but never on CPU

    # The saved adapter *is* the best epoch: reloaded, it scores exactly the logged accuracies.
    loaded = kd.load_adapted_model(tmp_path / "run", config.checkpoint)
    size, mean, std = 16, (0.5,) * 3, (0.5,) * 3
    for split, key in (("val", "best_val_accuracy"), ("test", "test_accuracy")):
        images = open_images(config.data, split, size, mean, std)
        _, accuracy = evaluate(loaded, torch.utils.data.TensorDataset(*images.batch()), 64, "cpu")
        assert accuracy == pytest.approx(log[key], abs=1e-12)


def test_a_seed_reproduces_the_adapter_exactly(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_adapters(tiny_config(epochs=2, seed=seed), tmp_path / name, progress=False)
    a, b, c = (load_file(tmp_path / n / "adapter.safetensors") for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_drop_path_is_for_training_only():
    result = train_adapters(tiny_config(epochs=2, drop_path=0.2), progress=False)
    assert result.log.run.drop_path_blocks == 2
    assert not any(type(m).__name__ == "DropPath" for m in result.model.modules())
    # The recorded backbone is the one the adapter loads onto: no drop_path_rate in it.
    assert "drop_path_rate" not in result.log.backbone["model_kwargs"]


def test_existing_output_is_refused_before_training(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.json").write_text("{}")  # an empty directory is taken over
    with pytest.raises(OutputExistsError, match="Pass force=True"):
        train_adapters(tiny_config(), tmp_path / "run", progress=False)


def test_bad_data_leaves_no_output(tmp_path):
    with pytest.raises(InputError, match="neither 'digits'"):
        train_adapters(tiny_config(data=str(tmp_path / "nope")), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup_epochs": 3}, "^warmup_epochs"),  # parameters; the CLI maps them to flags
        ({"batch_size": 0}, "^batch_size"),
        ({"lr": -1.0}, "^lr"),
        ({"drop_path": 1.0}, "^drop_path"),
        ({"checkpoint": "missing.safetensors"}, "^checkpoint"),
        ({"model_kwargs": {"num_classes": 3}}, "num_classes"),
    ],
)
def test_bad_recipes_are_explained(changes, message):
    with pytest.raises(InputError, match=message):
        tiny_config(**changes)


def test_a_batch_larger_than_the_data_is_explained():
    with pytest.raises(InputError, match="lower batch_size"):
        train_adapters(tiny_config(batch_size=4096), progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_on_cuda():
    result = train_adapters(tiny_config(device="cuda", epochs=4), progress=False)
    assert result.log.run.amp in ("bfloat16", "float16")
    assert result.log.run.device.startswith("cuda")
    losses = [epoch.train_loss for epoch in result.log.epochs]
    assert losses[-1] < losses[0]
    assert all(p.device.type == "cpu" for p in result.model.parameters())
