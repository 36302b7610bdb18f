"""classifier.py end to end on real SST rows with a tiny random checkpoint and the real tokenizer."""
import json
import os
import signal
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import classifier
import evaluation
from course.files import current_umask, read_predictions, read_sentiment
from models.classification import GPT2Classifier
from models.gpt2 import GPT2Model
from modules.lora import LoRALinear, merge_lora
from training.model_setup import apply_strategy
from training.optimization import make_optimizer
from training.settings import StrategySettings

DATA = Path("data")


def run_classifier(tmp_path: Path, checkpoint: Path, *flags: str) -> dict[str, float]:
    """Train on 64 SST rows; the grade of the dev predictions."""
    classifier.main(["--model_path", str(checkpoint), "--dataset", "sst", "--train_limit", "64", "--batch_size", "16",
                     "--epochs", "2", "--run_dir", str(tmp_path / "runs"), "--predictions_dir",
                     str(tmp_path / "predictions"), *flags])
    mode = "full-model" if "full-model" in flags else "last-linear-layer"
    return evaluation.grade(tmp_path / f"predictions/{mode}-sst-dev-out.csv", DATA / "ids-sst-dev.csv")


def sst_batch(count: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from datasets import tokenize_sentiment
    from models.tokenizer import load_tokenizer
    examples = read_sentiment(DATA / "ids-sst-train.csv", 5)[:count]
    data = tokenize_sentiment(examples, load_tokenizer(), "{sentence}", 128, "sst")
    batch = data.batches(count, shuffle=False)[0]
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


def classifier_model(checkpoint: Path, mode: str = "full-model", **strategy) -> GPT2Classifier:
    torch.manual_seed(0)
    gpt = GPT2Model.from_pretrained(checkpoint)
    apply_strategy(gpt, StrategySettings(**{"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, **strategy}),
                   train_gpt=mode == "full-model")
    return GPT2Classifier(gpt, 5, "last", 0.0)


def train_steps(model, steps: int, lr: float = 1e-3) -> list[float]:
    input_ids, mask, labels = sst_batch()
    optimizer = make_optimizer(model, lr, 0.01, model.gpt.config.num_hidden_layers)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(input_ids, mask)["logits"], labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_a_few_steps_on_real_sst_rows_lower_the_loss(tiny_checkpoint):
    losses = train_steps(classifier_model(tiny_checkpoint[0]).train(), steps=15)
    assert losses[-1] < 0.7 * losses[0]


def test_last_linear_layer_leaves_every_gpt2_weight_bit_identical(tiny_checkpoint):
    model = classifier_model(tiny_checkpoint[0], mode="last-linear-layer").train()
    gpt_before = {k: v.clone() for k, v in model.gpt.state_dict().items()}
    head_before = model.classifier.weight.clone()
    train_steps(model, steps=3)
    assert all(torch.equal(v, gpt_before[k]) for k, v in model.gpt.state_dict().items())
    assert not torch.equal(model.classifier.weight, head_before)


def test_lora_trains_only_lora_and_head_and_merging_keeps_the_logits(tiny_checkpoint):
    model = classifier_model(tiny_checkpoint[0], lora=True).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith(("classifier.", "pooler.")) for name in trainable)
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    train_steps(model, steps=3)
    changed = {k for k, v in model.state_dict().items() if "lora_" not in k and not torch.equal(v, base_before[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    model.eval()
    input_ids, mask, _ = sst_batch(8)
    with torch.no_grad():
        before = model(input_ids, mask)["logits"]
        merge_lora(model.gpt)
        after = model(input_ids, mask)["logits"]
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_run_writes_gradeable_predictions_for_every_id_in_order(tmp_path, tiny_checkpoint, capsys):
    results = run_classifier(tmp_path, tiny_checkpoint[0], "--fine-tune-mode", "full-model",
                             "--lr", "1e-3")
    predictions = tmp_path / "predictions"
    test_ids = [e.id for e in read_sentiment(DATA / "ids-sst-test-student.csv", 5, labelled=False)]
    assert list(read_predictions(predictions / "full-model-sst-test-out.csv")) == test_ids
    dev_file = predictions / "full-model-sst-dev-out.csv"
    capsys.readouterr()
    evaluation.main(["grade", str(dev_file), str(DATA / "ids-sst-dev.csv")])
    assert f"accuracy   {results['accuracy']:.4f}" in capsys.readouterr().out and results["count"] == 1101
    run_dir = tmp_path / "runs" / "sst"
    assert {"best.pt", "last.pt", "metrics.jsonl", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["identity"]["task"] == "sentiment-sst"
    # one definition of the metrics: the graded file scores what the best epoch's dev pass scored
    assert (results["accuracy"], results["macro_f1"]) == (best["metrics"]["accuracy"], best["metrics"]["macro_f1"])
    readable = 0o666 & ~current_umask()
    for path in (dev_file, run_dir / "metrics.jsonl", run_dir / "curves.png", run_dir / "settings.json"):
        assert stat.S_IMODE(path.stat().st_mode) == readable, path
    recorded = json.loads((run_dir / "settings.json").read_text())
    assert recorded["settings"]["train"]["lr"] == 1e-3 and recorded["settings"]["train"]["batch_size"] == 16
    assert recorded["settings"]["task"]["dataset"] == "sst"
    assert recorded["command"][:2] == ["classifier.py", "--model_path"]
    assert recorded["environment"]["versions"]["torch"] == torch.__version__ and recorded["environment"]["revision"]


SIGNALLED_RUN = ("--fine-tune-mode", "full-model", "--lr", "1e-3", "--scheduler", "cosine", "--warmup_ratio", "0.2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> dict[str, torch.Tensor]:
    """The weights at the end of the run the signal tests interrupt, run without a signal."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_classifier(out, tiny_checkpoint[0], *SIGNALLED_RUN)
    return torch.load(out / "runs/sst/last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_saves_a_checkpoint_that_resumes_bit_identical(monkeypatch, tmp_path, tiny_checkpoint,
                                                                          uninterrupted, signum):
    calls, cross_entropy = [0], F.cross_entropy

    def signal_in_second_epoch(*args, **kwargs):  # calls: 4 batches, the dev loss, then epoch 1
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signum)
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(classifier.F, "cross_entropy", signal_in_second_epoch)
    with pytest.raises(SystemExit) as stopped:
        run_classifier(tmp_path, tiny_checkpoint[0], *SIGNALLED_RUN)
    assert stopped.value.code == 128 + signum
    saved = torch.load(tmp_path / "runs/sst/last.pt", weights_only=True)["progress"]
    assert (saved["epoch"], saved["batches_done"]) == (1, 2)  # the step under way when the signal came
    monkeypatch.setattr(classifier.F, "cross_entropy", cross_entropy)
    run_classifier(tmp_path, tiny_checkpoint[0], *SIGNALLED_RUN, "--resume")

    resumed = torch.load(tmp_path / "runs/sst/last.pt", weights_only=True)["model"]
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_out_of_memory_advice_works_either_way(monkeypatch, tmp_path, tiny_checkpoint):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(classifier.F, "cross_entropy", out_of_memory)
    with pytest.raises(SystemExit) as stopped:
        run_classifier(tmp_path, tiny_checkpoint[0], "--fine-tune-mode", "full-model")
    message = str(stopped.value.code)
    assert "Add --resume --activation_checkpointing to go on" in message
    assert message.endswith("start again with smaller batches: --overwrite --batch_size 8 --grad_accum 2 keeps the "
                            "effective batch; --precision bf16 halves the activations too")
    monkeypatch.undo()
    run_classifier(tmp_path, tiny_checkpoint[0], "--fine-tune-mode", "full-model", "--resume",
                   "--activation_checkpointing")
    run_classifier(tmp_path, tiny_checkpoint[0], "--fine-tune-mode", "full-model", "--overwrite", "--batch_size", "8",
                   "--grad_accum", "2")
    settings = json.loads((tmp_path / "runs/sst/settings.json").read_text())["settings"]["train"]
    assert (settings["batch_size"], settings["grad_accum"]) == (8, 2)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, tiny_checkpoint):
    calls, cross_entropy = [0], F.cross_entropy

    def nan_in_second_epoch(*args, **kwargs):  # calls: 4 batches, the dev loss, then epoch 1
        calls[0] += 1
        loss = cross_entropy(*args, **kwargs)
        return loss * float("nan") if calls[0] == 7 else loss

    monkeypatch.setattr(classifier.F, "cross_entropy", nan_in_second_epoch)
    # read with the other losses of epoch 1 (its end comes before --log_every 10), and never saved
    with pytest.raises(SystemExit, match=r"training loss is nan at epoch 1, optimizer steps 5-8 \(the loss is read "
                                         "every --log_every steps\)"):
        run_classifier(tmp_path, tiny_checkpoint[0], "--fine-tune-mode", "full-model")
    last = torch.load(tmp_path / "runs/sst/last.pt", weights_only=True)
    assert last["progress"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_zero_shot_cloze_writes_predictions(tmp_path, tiny_checkpoint, capsys):
    results = run_classifier(tmp_path, tiny_checkpoint[0], "--cloze", "--epochs", "0")
    # the accuracy the run reports is that of the dev file it wrote
    assert f"sst dev: accuracy {results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f}" in capsys.readouterr().out
    test_ids = [e.id for e in read_sentiment(DATA / "ids-sst-test-student.csv", 5, labelled=False)]
    assert list(read_predictions(tmp_path / "predictions/last-linear-layer-sst-test-out.csv")) == test_ids
    assert not (tmp_path / "runs").exists()


def test_cloze_logits_are_the_label_words_of_the_language_model_head(tiny_checkpoint):
    gpt = GPT2Model.from_pretrained(tiny_checkpoint[0]).eval()
    words = [7818, 2089, 8788, 922, 1049]
    model = GPT2Classifier(gpt, 5, "last", 0.0, label_token_ids=words)
    input_ids, mask, _ = sst_batch(4)
    with torch.no_grad():
        full = gpt.hidden_state_to_token(gpt(input_ids, mask)["last_token"])
        torch.testing.assert_close(model(input_ids, mask)["logits"], full[:, words], atol=1e-5, rtol=0)
