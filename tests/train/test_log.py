"""The training log's records: an epoch's summary line (the start of its progress line)."""

from __future__ import annotations

from karst_deploy.train.log import EpochRecord


def _record(epoch: int, seconds: float) -> EpochRecord:
    return EpochRecord(epoch, 1.0 / epoch, 0.5, 1.0, 0.5 + epoch / 100, 1e-3, seconds)


def test_an_epoch_summary_names_the_epoch_loss_and_the_best_validation_accuracy_so_far():
    best = _record(2, 4.0)
    assert _record(3, 2.0).summary(4, best) == "epoch 3/4  loss 0.333  val acc 0.530  best 0.520"
