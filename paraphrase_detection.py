"""Quora paraphrase detection with GPT-2: by default a cloze prompt answered "yes" or "no" through the
language-model head; train, keep the best dev epoch, write the course's prediction files.

    python paraphrase_detection.py --use_gpu
"""
import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import evaluation
from datasets import TokenizedDataset, read_paraphrase, seeded_sample, tokenize_paraphrase
from models.gpt2 import GPT2Model
from modules.lora import merge_lora
from modules.losses import language_model_loss
from modules.pooling import POOLING, Pooler
from training import (Run, add_model_args, add_training_args, build_gpt2, choose_device, count_parameters,
                      freeze_for_strategy, predict, seed_everything, tokenizer_for, train_and_restore_best,
                      write_on_main)

PROMPT = 'Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no": '
NO_YES = [3919, 8505]  # class 0 is the token "no", class 1 the token "yes"
FULL_QUORA_PAIRS = 283_003  # the course's training set, for the projected epoch time


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.gpt(input_ids, attention_mask)
        pooled = out["last_token"] if self.cloze else self.pooler(out["last_hidden_state"], attention_mask,
                                                                  out["last_token"])
        samples = self.dropout_samples if self.training else 1
        logits = torch.stack([self.decide(self.dropout(pooled)) for _ in range(samples)]).mean(0)
        return {"logits": logits, "pooled": pooled, "hidden": out["last_hidden_state"]}

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.gpt.token_logits(pooled, self.no_yes) if self.cloze else self.classifier(pooled)


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--para_train", type=Path, default=Path("data/quora-train.csv"))
    parser.add_argument("--para_dev", type=Path, default=Path("data/quora-dev.csv"))
    parser.add_argument("--para_test", type=Path, default=Path("data/quora-test-student.csv"))
    parser.add_argument("--para_dev_out", type=Path, default=Path("predictions/para-dev-output.csv"))
    parser.add_argument("--para_test_out", type=Path, default=Path("predictions/para-test-output.csv"))
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--head", choices=["cloze", *POOLING],
                        default="cloze", help="cloze: yes/no logits of the language-model head; else a linear "
                                              "head on this pooling of the hidden states")
    parser.add_argument("--prompt", default=PROMPT, help="template with fields {s1} and {s2}")
    parser.add_argument("--head_dropout", type=float, default=0.0)
    parser.add_argument("--dropout_samples", type=int, default=1, help="multi-sample dropout: masks per step")
    parser.add_argument("--label_smoothing", type=float, default=0.0)
    parser.add_argument("--rdrop", type=float, default=0.0,
                        help="R-Drop: weight of the symmetric KL between two dropout passes")
    parser.add_argument("--contrastive", type=float, default=0.0,
                        help="weight of a SimCSE-style loss: two dropout passes of a pair are positives, "
                             "the batch's other pairs negatives")
    parser.add_argument("--contrastive_temperature", type=float, default=0.05)
    parser.add_argument("--lm_loss", type=float, default=0.0,
                        help="GPT-1's auxiliary language-model loss on the prompt, with this weight")
    parser.add_argument("--symmetric", action="store_true",
                        help="GPT-1's symmetric input: score both sentence orders and average the logits")
    parser.add_argument("--k_shot", type=int, default=0,
                        help="prepend k answered training pairs to every prompt (with --epochs 0: k-shot)")
    parser.add_argument("--train_limit", type=int, default=0, help="train on a seeded sample of N pairs (0: all)")
    add_model_args(parser)
    add_training_args(parser)
    args = parser.parse_args()
    if args.dropout_samples > 1 and not args.head_dropout:
        raise SystemExit("--dropout_samples needs --head_dropout > 0: the samples differ only by dropout")
    return args


def demonstrations(examples, k: int, seed: int, prompt: str) -> str:
    """k answered training pairs, as template text: braces doubled so format fields stay literal."""
    answered = [prompt.format(s1=e.sentence1, s2=e.sentence2) + ("yes" if e.label else "no") + "\n"
                for e in random.Random(seed).sample(examples, k)]
    return "".join(answered).replace("{", "{{").replace("}", "}}")


def paraphrase_loss(model: ParaphraseGPT, batch: dict[str, torch.Tensor], args: argparse.Namespace) -> torch.Tensor:
    """Cross-entropy on the decision, plus whichever auxiliary losses the flags turn on."""
    first = model(batch["input_ids"], batch["attention_mask"])
    logits = combine_orders(first["logits"], args.symmetric)
    loss = F.cross_entropy(logits, batch["labels"], label_smoothing=args.label_smoothing)
    if args.rdrop or args.contrastive:
        second = model(batch["input_ids"], batch["attention_mask"])
        if args.rdrop:
            other = combine_orders(second["logits"], args.symmetric)
            loss = (loss + F.cross_entropy(other, batch["labels"], label_smoothing=args.label_smoothing)) / 2
            loss = loss + args.rdrop * symmetric_kl(logits, other)
        if args.contrastive:
            loss = loss + args.contrastive * info_nce(first["pooled"], second["pooled"], args.contrastive_temperature)
    if args.lm_loss:
        logits_all = model.gpt.hidden_state_to_token(first["hidden"])
        loss = loss + args.lm_loss * language_model_loss(logits_all, batch["input_ids"], batch["attention_mask"])
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


def main() -> None:
    args = get_args()
    device = choose_device(args.use_gpu, args.precision)
    seed_everything(args.seed)
    tokenizer = tokenizer_for(args)
    gpt = build_gpt2(args)
    max_len = gpt.config.max_position_embeddings

    train_examples = read_paraphrase(args.para_train)
    template = (demonstrations(train_examples, args.k_shot, args.seed, args.prompt) if args.k_shot else "") + args.prompt
    train_examples = seeded_sample(train_examples, args.train_limit, args.seed)
    train, dev, test = (tokenize_paraphrase(examples, tokenizer, template, max_len, str(path), args.symmetric)
                        for examples, path in ((train_examples, args.para_train),
                                               (read_paraphrase(args.para_dev), args.para_dev),
                                               (read_paraphrase(args.para_test, labelled=False), args.para_test)))
    freeze_for_strategy(gpt, args, train_gpt=True)
    model = ParaphraseGPT(gpt, args.head, args.head_dropout, args.dropout_samples).to(device)
    print(f"{len(train)} train, {len(dev)} dev, {len(test)} test pairs; {count_parameters(model)}")

    identity = {"task": "paraphrase", "model": gpt.config.to_dict(), "head": args.head,
                "lora": [args.lora_rank, args.lora_targets, args.dora] if args.lora else None}
    run = Run(args.run_dir or Path("runs") / "paraphrase", identity, device, args.resume)

    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return combine_orders(model(batch["input_ids"], batch["attention_mask"])["logits"], args.symmetric)

    def evaluate() -> dict[str, float]:
        scores = predict(model, dev.batches(args.eval_batch_size, shuffle=False), device, args.precision, logits,
                         len(dev), "dev")
        metrics = evaluation.classification_metrics(dev.labels, scores.argmax(-1).tolist(), [0, 1])
        return {name: metrics[name] for name in ("accuracy", "f1", "precision", "recall")}

    def epoch_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        return train.batches(args.batch_size, shuffle=True, seed=args.seed + epoch)

    if args.epochs > 0:
        padding = padding_fraction(epoch_batches(0))
        _, log = train_and_restore_best(model, args, args.lr, gpt.config.num_hidden_layers, run,
                                        epoch_batches, -(-len(train) // args.batch_size),
                                        lambda batch: paraphrase_loss(model, batch, args), evaluate)
        report_speed(log.records, train, padding)
    if args.lora:
        merge_lora(model.gpt)
    for data, path in ((dev, args.para_dev_out), (test, args.para_test_out)):
        scores = predict(model, data.batches(args.eval_batch_size, shuffle=False), device, args.precision, logits,
                         len(data), path.name)
        write_on_main(evaluation.write_predictions, path, data.ids, scores.argmax(-1).tolist(),
                      evaluation.PARAPHRASE_HEADER)
    results = evaluation.grade(args.para_dev_out, args.para_dev)
    majority = sum(label == 0 for label in dev.labels) / len(dev)
    print(f"dev: accuracy {results['accuracy']:.4f}, F1 {results['f1']:.4f}, precision {results['precision']:.4f}, "
          f"recall {results['recall']:.4f} (majority class 'not duplicate': accuracy {majority:.4f})")


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
    main()
