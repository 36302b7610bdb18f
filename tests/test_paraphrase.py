"""paraphrase_detection.py with a tiny random checkpoint, the real tokenizer and the Quora sample."""
import json
from pathlib import Path

import pytest
import torch

import evaluation
import paraphrase_detection as para
from course.files import PARAPHRASE_HEADER, ParaphraseExample, read_paraphrase, read_predictions, write_predictions
from datasets import TokenizedDataset, tokenize_paraphrase
from models.classification import GPT2Classifier
from models.gpt2 import GPT2Model
from models.tokenizer import load_tokenizer
from training.optimization import make_optimizer

DATA = Path("data")
METRICS = ("accuracy", "f1", "precision", "recall")


def quora_batch(count: int, symmetric: bool = False) -> dict[str, torch.Tensor]:
    examples = read_paraphrase(DATA / "quora-train.csv")[:count]
    data = tokenize_paraphrase(examples, load_tokenizer(), para.PROMPT, 128, "quora", symmetric)
    return data.batches(count, shuffle=False)[0]


def paraphrase_model(checkpoint: Path, head: str = "cloze", head_dropout: float = 0.0,
                     samples: int = 1) -> GPT2Classifier:
    torch.manual_seed(0)
    cloze = head == "cloze"
    return GPT2Classifier(GPT2Model.from_pretrained(checkpoint), 2, "last" if cloze else head, head_dropout, samples,
                          para.NO_YES if cloze else None)


def test_overfits_64_training_pairs(tiny_checkpoint):
    model = paraphrase_model(tiny_checkpoint[0])
    batch = quora_batch(64)
    optimizer = make_optimizer(model, 2e-3, 0.0, model.gpt.config.num_hidden_layers)
    for _ in range(80):
        model.train()
        loss = para.paraphrase_loss(model, batch, para.ParaphraseSettings())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        predictions = model(batch["input_ids"], batch["attention_mask"])["logits"].argmax(-1)
    assert torch.equal(predictions, batch["labels"])


def test_cloze_decision_reads_exactly_the_no_and_yes_logits(tiny_checkpoint):
    model = paraphrase_model(tiny_checkpoint[0]).eval()
    batch = quora_batch(4)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])["logits"]
        out = model.gpt(batch["input_ids"], batch["attention_mask"])
        vocabulary = model.gpt.hidden_state_to_token(out["last_token"])
    assert para.NO_YES == [3919, 8505]
    torch.testing.assert_close(logits, vocabulary[:, [3919, 8505]], atol=1e-5, rtol=0)


def test_symmetric_input_scores_both_orders_alike(tiny_checkpoint):
    model = paraphrase_model(tiny_checkpoint[0], head="mean").eval()
    pair = ("How do I learn Python quickly?", "What is the fastest way to learn Python?")
    examples = [ParaphraseExample("a", *pair, 1), ParaphraseExample("b", *reversed(pair), 1)]
    batch = tokenize_paraphrase(examples, load_tokenizer(), para.PROMPT, 128, "pairs", symmetric=True).batches(
        2, shuffle=False)[0]
    with torch.no_grad():
        logits = para.combine_orders(model(batch["input_ids"], batch["attention_mask"])["logits"], True)
    order = batch["indices"].tolist()
    torch.testing.assert_close(logits[order.index(0)], logits[order.index(1)], atol=1e-6, rtol=0)


@pytest.mark.parametrize("option", [dict(label_smoothing=0.1), dict(rdrop=1.0), dict(contrastive=0.5),
                                    dict(lm_loss=0.5), dict(symmetric=True), "multi-sample dropout"])
def test_each_loss_option_changes_the_loss_and_keeps_it_finite(tiny_checkpoint, option):
    def loss_with(flags: dict, samples: int = 1) -> float:
        model = paraphrase_model(tiny_checkpoint[0], head_dropout=0.2, samples=samples).train()
        batch = quora_batch(8, symmetric=flags.get("symmetric", False))
        torch.manual_seed(1)
        return para.paraphrase_loss(model, batch, para.ParaphraseSettings(**flags)).item()

    base = loss_with({})
    changed = loss_with({}, samples=4) if option == "multi-sample dropout" else loss_with(option)
    assert torch.isfinite(torch.tensor(changed)) and changed != base


def test_k_shot_prompt_holds_answered_demonstrations():
    examples = read_paraphrase(DATA / "quora-train.csv")[:50]
    template = para.demonstrations(examples, 2, seed=3, prompt=para.PROMPT) + para.PROMPT
    text = template.format(s1="A?", s2="B?")
    assert text.count('Answer "yes" or "no": ') == 3 and text.endswith('Is "A?" a paraphrase of "B?"? Answer "yes" or "no": ')
    assert text.split("\n")[0].endswith(("yes", "no"))


def test_run_writes_complete_ordered_gradeable_files(tmp_path, tiny_checkpoint, capsys):
    dev_out, test_out = tmp_path / "para-dev-output.csv", tmp_path / "para-test-output.csv"
    para.main(["--model_path", str(tiny_checkpoint[0]), "--epochs", "1", "--train_limit", "32", "--lr", "1e-3",
               "--run_dir", str(tmp_path / "run"), "--para_dev_out", str(dev_out), "--para_test_out", str(test_out)])
    test_ids = [e.id for e in read_paraphrase(DATA / "quora-test-student.csv", labelled=False)]
    predictions = read_predictions(test_out)
    assert list(predictions) == test_ids and set(predictions.values()) <= {"8505", "3919"}  # the course's encoding
    graded = evaluation.grade(dev_out, DATA / "quora-dev.csv")
    assert graded["count"] == 1999
    answers = read_predictions(dev_out)  # the same answers as 0/1 grade the same
    plain = tmp_path / "plain.csv"
    write_predictions(plain, list(answers), [int(a == "8505") for a in answers.values()], PARAPHRASE_HEADER)
    assert evaluation.grade(plain, DATA / "quora-dev.csv") == graded
    output = capsys.readouterr().out
    assert any(line.startswith("training speed: ") for line in output.splitlines())
    assert f"evaluation.py grade {dev_out} {DATA / 'quora-dev.csv'}" in output  # the summary's next command
    # one definition of the metrics: the graded file scores what the epoch's dev pass logged
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    (dev,) = [record for record in records if record["split"] == "dev"]
    assert {name: dev[name] for name in METRICS} == {name: graded[name] for name in METRICS}


def test_speed_report_says_what_each_number_is(capsys):
    records = [{"split": "epoch", "epoch": 0, "step": 4, "seconds": 2.0, "tokens_per_second": 1500.0}]
    pairs = TokenizedDataset(["a", "b"], [[1] * 30, [1] * 50], [0, 1])
    para.report_speed(records, pairs, 0.125)
    minutes = para.FULL_QUORA_PAIRS * 40 / 1500 / 60
    assert capsys.readouterr().out == (
        "training speed: 1,500 tokens/s; 12.5% of the batches' tokens are padding; 40.0 tokens a pair, so an epoch "
        f"of the full 283,003 pairs would take {minutes:.1f} minutes\n")


def first_rows(name: str, folder: Path, rows: int = 40) -> Path:
    """The header and first `rows` rows of a course file, under its own name in `folder`."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    (folder / name).write_text("".join(lines[:rows + 1]))
    return folder / name


def test_k_shot_without_training_writes_predictions(tmp_path, tiny_checkpoint):
    dev, test = first_rows("quora-dev.csv", tmp_path), first_rows("quora-test-student.csv", tmp_path)
    dev_out, test_out = tmp_path / "dev-out.csv", tmp_path / "test-out.csv"
    para.main(["--model_path", str(tiny_checkpoint[0]), "--epochs", "0", "--k_shot", "1", "--para_dev", str(dev),
               "--para_test", str(test), "--para_dev_out", str(dev_out), "--para_test_out", str(test_out)])
    assert list(read_predictions(test_out)) == [pair.id for pair in read_paraphrase(test, labelled=False)]
    assert list(read_predictions(dev_out)) == [pair.id for pair in read_paraphrase(dev)]


def test_ulmfit_with_lora_trains_top_down_with_its_schedule(tmp_path, tiny_checkpoint):
    """--ulmfit, as in classifier.py: the cloze decision has no head, so the top layer's adapters train first."""
    run_dir = tmp_path / "run"
    para.main(["--model_path", str(tiny_checkpoint[0]), "--ulmfit", "--lora", "--epochs", "2", "--keep_best", "2",
               "--train_limit", "16", "--lr", "1e-2", "--run_dir", str(run_dir), "--para_dev_out",
               str(tmp_path / "dev.csv"), "--para_test_out", str(tmp_path / "test.csv")])
    train = json.loads((run_dir / "settings.json").read_text())["settings"]["train"]
    assert (train["scheduler"], train["layer_lr_decay"], train["warmup_ratio"]) == ("slanted_triangular", 1 / 2.6, 0.1)
    first, second = (torch.load(run_dir / f"epoch{epoch}.pt", weights_only=True)["model"] for epoch in (0, 1))
    moved = {name for name in first if not torch.equal(first[name], second[name])}
    assert moved and all(".lora_" in name for name in moved)  # the second epoch trains adapters, and only them
    assert {name.split(".layers.")[1].split(".")[0] for name in moved} == {"0", "1"}  # both layers by then
