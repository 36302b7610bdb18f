"""Quora paraphrase detection with GPT-2: by default a cloze prompt answered "yes" or "no" through the
language-model head; train, keep the best dev epoch, write the course's prediction files.

    python paraphrase_detection.py --use_gpu
"""
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import evaluation
from config import FREE, NO_ID, YES_ID, require, require_range, setting
from datasets import BATCH_PADDING, EpochBatches, TokenizedDataset, seeded_sample, tokenize_paraphrase
from models.gpt2 import GPT2Model
from modules.losses import language_model_loss
from modules.pooling import POOLING, Pooler
from training.checkpoints import seed_everything
from training.course_files import PARAPHRASE_HEADER, read_paraphrase, write_predictions
from training.device import choose_device
from training.distributed import write_on_main
from training.inference import predict
from training.loop import train_and_restore_best
from training.metrics import classification_metrics
from training.model_setup import apply_strategy, build_gpt2, count_parameters, tokenizer_for
from training.run_dir import plan_run
from training.settings import (FlagParser, ScriptSettings, require_input_file, require_template, require_writable,
                               settings_from_flags, settings_parser, user_errors_end_in_one_line)
from training.token_cache import cached_tokens

PROMPT = 'Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no": '
NO_YES = [NO_ID, YES_ID]  # class 0 is the token "no", class 1 the token "yes"
FULL_QUORA_PAIRS = 283_003  # the course's training set, for the projected epoch time


@dataclass(frozen=True)
class ParaphraseSettings:
    """The task: its files, the prompt, the decision head and the losses."""
    para_train: Path = setting(Path("data/quora-train.csv"), "labelled training pairs", on_resume=FREE)
    para_dev: Path = setting(Path("data/quora-dev.csv"), "labelled dev pairs: pick the best epoch",
                             on_resume=FREE)
    para_test: Path = setting(Path("data/quora-test-student.csv"), "unlabelled test pairs", on_resume=FREE)
    para_dev_out: Path = setting(Path("predictions/para-dev-output.csv"), "dev predictions file", on_resume=FREE)
    para_test_out: Path = setting(Path("predictions/para-test-output.csv"), "test predictions file",
                                  on_resume=FREE)
    eval_batch_size: int = setting(128, "pairs per batch when scoring dev and test", on_resume=FREE)
    head: str = setting("cloze", "cloze: yes/no logits of the language-model head; else a linear head on this "
                                 "pooling of the hidden states", choices=("cloze", *POOLING))
    prompt: str = setting(PROMPT, "template with fields {s1} and {s2}")
    head_dropout: float = setting(0.0, "dropout before the decision")
    dropout_samples: int = setting(1, "multi-sample dropout: masks per step")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    rdrop: float = setting(0.0, "R-Drop: weight of the symmetric KL between two dropout passes")
    contrastive: float = setting(0.0, "weight of a SimCSE-style loss: two dropout passes of a pair are "
                                      "positives, the batch's other pairs negatives")
    contrastive_temperature: float = setting(0.05, "temperature of the contrastive loss")
    lm_loss: float = setting(0.0, "GPT-1's auxiliary language-model loss on the prompt, with this weight")
    symmetric: bool = setting(False, "GPT-1's symmetric input: score both sentence orders and average the logits")
    k_shot: int = setting(0, "prepend k answered training pairs to every prompt (with --epochs 0: k-shot)")

    def __post_init__(self) -> None:
        for name in ("para_train", "para_dev", "para_test"):
            require_input_file(self, name)
        for name in ("para_dev_out", "para_test_out"):
            require_writable(self, name)
        require_range(self, "eval_batch_size", 1)
        require_template(self, "prompt", {"s1", "s2"})
        require_range(self, "head_dropout", 0, 1, high_open=True)
        require_range(self, "dropout_samples", 1)
        require(self, "dropout_samples", self.dropout_samples == 1 or self.head_dropout > 0,
                "needs --head_dropout > 0: the samples differ only by dropout")
        require_range(self, "label_smoothing", 0, 1, high_open=True)
        for name in ("rdrop", "contrastive", "lm_loss", "k_shot"):
            require_range(self, name, 0, note="0 turns it off")
        require_range(self, "contrastive_temperature", 0, low_open=True)


@dataclass(frozen=True)
class Settings(ScriptSettings):
    task: ParaphraseSettings


def build_parser() -> FlagParser:
    return settings_parser(Settings, "paraphrase_detection.py", __doc__, {
        "strategy": {"skip": ("prefix_length", "ulmfit")},
        "run": {"helps": {"run_dir": "the run's directory (default: runs/paraphrase)"}},
    })


def get_settings(argv: list[str]) -> Settings:
    """The settings the flags ask for, every value checked, before any data or model is loaded."""
    return settings_from_flags(Settings, build_parser().parse_args(argv))


class ParaphraseGPT(nn.Module):
    """GPT-2 and a two-way decision: the next-token logits of "no" and "yes" after the prompt (cloze),
    or a linear head on pooled states. With `dropout_samples` > 1 the head averages the logits of
    several dropout masks (multi-sample dropout)."""

    def __init__(self, gpt: GPT2Model, head: str, head_dropout: float, dropout_samples: int):
        super().__init__()
        self.gpt = gpt
        self.cloze = head == "cloze"
        if not self.cloze:
            self.pooler = Pooler(gpt.config.hidden_size, head)
            self.classifier = nn.Linear(gpt.config.hidden_size, 2)
        self.register_buffer("no_yes", torch.tensor(NO_YES), persistent=False)
        self.dropout = nn.Dropout(head_dropout)
        self.dropout_samples = dropout_samples

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                padding: str | None = None) -> dict[str, torch.Tensor]:
        out = self.gpt(input_ids, attention_mask, padding=padding)
        pooled = out["last_token"] if self.cloze else self.pooler(out["last_hidden_state"], attention_mask,
                                                                  out["last_token"])
        samples = self.dropout_samples if self.training else 1
        logits = torch.stack([self.decide(self.dropout(pooled)) for _ in range(samples)]).mean(0)
        return {"logits": logits, "pooled": pooled, "hidden": out["last_hidden_state"]}

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.gpt.token_logits(pooled, self.no_yes) if self.cloze else self.classifier(pooled)


def demonstrations(examples, k: int, seed: int, prompt: str) -> str:
    """k answered training pairs, as template text: braces doubled so format fields stay literal."""
    answered = [prompt.format(s1=e.sentence1, s2=e.sentence2) + ("yes" if e.label else "no") + "\n"
                for e in random.Random(seed).sample(examples, k)]
    return "".join(answered).replace("{", "{{").replace("}", "}}")


def paraphrase_loss(model: ParaphraseGPT, batch: dict[str, torch.Tensor], task: ParaphraseSettings) -> torch.Tensor:
    """Cross-entropy on the decision, plus whichever auxiliary losses the settings turn on."""
    first = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
    logits = combine_orders(first["logits"], task.symmetric)
    loss = F.cross_entropy(logits, batch["labels"], label_smoothing=task.label_smoothing)
    if task.rdrop or task.contrastive:
        second = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
        if task.rdrop:
            other = combine_orders(second["logits"], task.symmetric)
            loss = (loss + F.cross_entropy(other, batch["labels"], label_smoothing=task.label_smoothing)) / 2
            loss = loss + task.rdrop * symmetric_kl(logits, other)
        if task.contrastive:
            loss = loss + task.contrastive * info_nce(first["pooled"], second["pooled"], task.contrastive_temperature)
    if task.lm_loss:
        logits_all = model.gpt.hidden_state_to_token(first["hidden"])
        loss = loss + task.lm_loss * language_model_loss(logits_all, batch["input_ids"], batch["attention_mask"])
    return loss


def combine_orders(logits: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """With symmetric input a batch holds both orders of each pair: average their logits."""
    return logits.view(2, -1, logits.size(-1)).mean(0) if symmetric else logits


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    p, q = first.float().log_softmax(-1), second.float().log_softmax(-1)
    return (F.kl_div(p, q, log_target=True, reduction="batchmean")
            + F.kl_div(q, p, log_target=True, reduction="batchmean")) / 2


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    similarity = F.normalize(first.float(), dim=-1) @ F.normalize(second.float(), dim=-1).T / temperature
    return F.cross_entropy(similarity, torch.arange(len(first), device=first.device))


def padding_fraction(batches: list[dict[str, torch.Tensor]]) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("paraphrase_detection.py"):
        settings = get_settings(argv)
        task, train = settings.task, settings.train
        train_examples = read_paraphrase(task.para_train)
        require(task, "k_shot", task.k_shot <= len(train_examples),
                f"more than the {len(train_examples)} pairs of --para_train")
        dev_examples, test_examples = read_paraphrase(task.para_dev), read_paraphrase(task.para_test, labelled=False)
        device = choose_device(settings.model.use_gpu, settings.model.precision, settings.model.deterministic)
        run = None
        if train.epochs > 0:
            run = plan_run(settings, settings.run.run_dir or Path("runs") / "paraphrase", "paraphrase",
                           {"--para_train": task.para_train, "--para_dev": task.para_dev},
                           ["paraphrase_detection.py", *argv], device)
        seed_everything(train.seed)
        tokenizer = tokenizer_for(settings.model)
        gpt = build_gpt2(settings.model)
        max_len = gpt.config.max_position_embeddings

        shots = demonstrations(train_examples, task.k_shot, train.seed, task.prompt) if task.k_shot else ""
        template = shots + task.prompt
        train_examples = seeded_sample(train_examples, train.train_limit, train.seed)
        train_data, dev, test = (
            cached_tokens(tokenize_paraphrase, examples, tokenizer, template, max_len, str(path), task.symmetric)
            for examples, path in ((train_examples, task.para_train), (dev_examples, task.para_dev),
                                   (test_examples, task.para_test)))
        apply_strategy(gpt, settings.strategy)
        model = ParaphraseGPT(gpt, task.head, task.head_dropout, task.dropout_samples).to(device)
        print(f"{len(train_data)} train, {len(dev)} dev, {len(test)} test pairs; {count_parameters(model)}")
        precision = settings.model.precision

        def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            out = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
            return combine_orders(out["logits"], task.symmetric)

        def evaluate() -> dict[str, float]:
            scores = predict(model, dev.batches(task.eval_batch_size, shuffle=False), device, precision, logits,
                             len(dev), "dev")
            metrics = classification_metrics(dev.labels, scores.argmax(-1).tolist(), [0, 1])
            return {name: metrics[name] for name in ("accuracy", "f1", "precision", "recall")}

        if run is not None:
            batches = EpochBatches(train_data, train.batch_size, train.seed)
            padding = padding_fraction(batches(0))
            log = train_and_restore_best(model, run, train, precision, gpt.config.num_hidden_layers, batches,
                                         lambda batch: paraphrase_loss(model, batch, task), evaluate)
            report_speed(log.records, train_data, padding)
        for data, path in ((dev, task.para_dev_out), (test, task.para_test_out)):
            scores = predict(model, data.batches(task.eval_batch_size, shuffle=False), device, precision, logits,
                             len(data), path.name)
            answers = [NO_YES[label] for label in scores.argmax(-1).tolist()]  # the course's encoding
            write_on_main(write_predictions, path, data.ids, answers, PARAPHRASE_HEADER)
        results = evaluation.grade(task.para_dev_out, task.para_dev)
        majority = sum(label == 0 for label in dev.labels) / len(dev)
        print(f"dev: accuracy {results['accuracy']:.4f}, F1 {results['f1']:.4f}, "
              f"precision {results['precision']:.4f}, recall {results['recall']:.4f} "
              f"(majority class 'not duplicate': accuracy {majority:.4f})")


def report_speed(records: list[dict], train: TokenizedDataset, padding: float) -> None:
    """Training tokens per second, padding, and the epoch time that speed gives the full 283k-pair set."""
    epochs = [r for r in records if r["split"] == "epoch"]
    speed = epochs[-1]["tokens_per_second"]
    tokens_per_pair = sum(len(t) for t in train.tokens) / len(train) * (2 if train.mirror else 1)
    projected = FULL_QUORA_PAIRS * tokens_per_pair / speed
    print(json.dumps({"train_tokens_per_second": round(speed), "padding_fraction": round(padding, 4),
                      "tokens_per_pair": round(tokens_per_pair, 1),
                      "projected_full_epoch_minutes": round(projected / 60, 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
