"""What only a GPU can show: a training step never waits for the GPU. Skipped without CUDA."""
import pytest
import torch

import classifier
from training import loop

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_steps_synchronise_only_when_the_loss_is_read(monkeypatch, tmp_path, tiny_checkpoint):
    """Between the reads of the loss (every --log_every steps, and at the epoch's end) no operation of the
    training loop waits for the GPU: torch.cuda's sync debug mode turns any such wait into an error."""
    checkpoint = tiny_checkpoint[0]
    read, train_epoch, reads = loop.LossesSinceRead.read, loop.Trainer.train_epoch, []

    def read_where_syncing_is_expected(self, *args):
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(args[-1])
            return read(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def train_epoch_refusing_syncs(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_epoch(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    monkeypatch.setattr(loop.LossesSinceRead, "read", read_where_syncing_is_expected)
    monkeypatch.setattr(loop.Trainer, "train_epoch", train_epoch_refusing_syncs)
    classifier.main(["--model_path", str(checkpoint), "--use_gpu", "--dataset", "sst", "--fine-tune-mode",
                     "full-model", "--train_limit", "64", "--batch_size", "4", "--epochs", "1", "--log_every", "5",
                     "--clip_norm", "1.0", "--run_dir", str(tmp_path / "run"), "--predictions_dir",
                     str(tmp_path / "predictions")])
    assert reads == [5, 10, 15, 16]  # 16 steps: read at every 5th and at the end
