"""Sentiment classification with GPT-2 on SST-5 and CFIMDB: train, keep the best dev epoch, write the
course's prediction files.

    python classifier.py --fine-tune-mode full-model --use_gpu
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import evaluation
from datasets import SENTIMENT_NUM_LABELS, TokenizedDataset, read_sentiment, seeded_sample, tokenize_sentiment
from models.gpt2 import GPT2Model
from modules.lora import merge_lora
from modules.pooling import POOLING, Pooler
from training import (Run, add_model_args, add_training_args, build_gpt2, choose_device, count_parameters,
                      freeze_for_strategy, gradual_unfreezing, predict, seed_everything, tokenizer_for,
                      train_and_restore_best, write_on_main)

COURSE_DEFAULTS = {  # the course's learning rates per mode and batch sizes per dataset
    "lr": {"last-linear-layer": 1e-3, "full-model": 1e-5},
    "batch_size": {"sst": 64, "cfimdb": 8},
}
CLOZE_TEMPLATE = "{sentence} All in all, the movie was"
LABEL_WORDS = {"sst": " terrible, bad, okay, good, great", "cfimdb": " bad, good"}


class SentimentClassifier(nn.Module):
    """GPT-2 and a head on the pooled hidden states (the course reads the last real token); or, in cloze
    mode, the language-model head's logits of one label word per class."""

    def __init__(self, gpt: GPT2Model, num_labels: int, pooling: str, head_dropout: float,
                 label_token_ids: list[int] | None = None):
        super().__init__()
        self.gpt = gpt
        self.cloze = label_token_ids is not None
        if self.cloze:
            self.register_buffer("label_token_ids", torch.tensor(label_token_ids), persistent=False)
        else:
            self.pooler = Pooler(gpt.config.hidden_size, pooling)
            self.dropout = nn.Dropout(head_dropout)
            self.classifier = nn.Linear(gpt.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.gpt(input_ids, attention_mask)
        if self.cloze:
            return self.gpt.token_logits(out["last_token"], self.label_token_ids)
        pooled = self.pooler(out["last_hidden_state"], attention_mask, out["last_token"])
        return self.classifier(self.dropout(pooled))


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fine-tune-mode", dest="fine_tune_mode", choices=["last-linear-layer", "full-model"],
                        default="last-linear-layer", help="train only the head, or GPT-2 too")
    parser.add_argument("--dataset", choices=["sst", "cfimdb", "both"], default="both")
    parser.add_argument("--data_dir", type=Path, default=Path("data"))
    parser.add_argument("--predictions_dir", type=Path, default=Path("predictions"))
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 last-linear-layer, 1e-5 full-model")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 64 for SST, 8 for CFIMDB")
    parser.add_argument("--head_dropout", "--hidden_dropout_prob", dest="head_dropout", type=float, default=0.3)
    parser.add_argument("--label_smoothing", type=float, default=0.0)
    parser.add_argument("--pooling", choices=POOLING, default="last")
    parser.add_argument("--prompt", default=None,
                        help="template around each sentence, e.g. 'Review: {sentence} Sentiment:'")
    parser.add_argument("--cloze", action="store_true",
                        help="score label words through the language-model head instead of a new head; "
                             "with --epochs 0 this is zero-shot")
    parser.add_argument("--label_words", default=None,
                        help=f"comma-separated, one single-token word per class; default {LABEL_WORDS}")
    parser.add_argument("--ulmfit", action="store_true",
                        help="gradual unfreezing, discriminative learning rates (/2.6 per layer) and a "
                             "slanted triangular schedule")
    parser.add_argument("--train_limit", type=int, default=0, help="train on a seeded sample of N rows (0: all)")
    add_model_args(parser)
    add_training_args(parser)
    args = parser.parse_args()
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    whole_model = args.fine_tune_mode == "full-model"
    if args.ulmfit and (args.lora or args.train_top_layers or not whole_model):
        raise SystemExit("--ulmfit unfreezes the whole model: use it with --fine-tune-mode full-model alone")
    if (args.lora or args.train_top_layers) and not whole_model:
        raise SystemExit("--lora and --train_top_layers train part of GPT-2: use --fine-tune-mode full-model")
    if args.cloze and args.pooling != "last":
        raise SystemExit("--cloze reads the last token's next-word logits; it takes no --pooling")
    if args.cloze and not whole_model and args.epochs > 0:
        raise SystemExit("--cloze has no new head to train in last-linear-layer mode; use --epochs 0 for "
                         "zero-shot, or --fine-tune-mode full-model (or --lora)")
    if args.ulmfit:  # ULMFiT's own settings, unless given
        args.layer_lr_decay = 1 / 2.6 if args.layer_lr_decay == 1.0 else args.layer_lr_decay
        args.scheduler = "slanted_triangular"
        args.warmup_ratio = args.warmup_ratio or 0.1


def label_token_ids(tokenizer, words: str, num_labels: int) -> list[int]:
    ids = []
    for word in words.split(","):
        word = " " + word.strip()
        tokens = tokenizer.encode(word)
        if len(tokens) != 1:
            raise SystemExit(f"label word {word!r} is {len(tokens)} tokens; cloze needs single-token words")
        ids += tokens
    if len(ids) != num_labels:
        raise SystemExit(f"--label_words needs {num_labels} words, got {len(ids)}")
    return ids


def load_split(args, tokenizer, dataset: str, split: str, template: str, max_len: int) -> TokenizedDataset:
    path = args.data_dir / f"ids-{dataset}-{split}.csv"
    examples = read_sentiment(path, SENTIMENT_NUM_LABELS[dataset], labelled=split != "test-student")
    if split == "train":
        examples = seeded_sample(examples, args.train_limit, args.seed)
    return tokenize_sentiment(examples, tokenizer, template, max_len, str(path))


def run_dataset(args: argparse.Namespace, dataset: str, device: torch.device) -> dict[str, float]:
    seed_everything(args.seed)
    num_labels = SENTIMENT_NUM_LABELS[dataset]
    batch_size = args.batch_size or COURSE_DEFAULTS["batch_size"][dataset]
    lr = args.lr or COURSE_DEFAULTS["lr"][args.fine_tune_mode]
    tokenizer = tokenizer_for(args)
    gpt = build_gpt2(args)
    template = args.prompt or (CLOZE_TEMPLATE if args.cloze else "{sentence}")
    train, dev, test = (load_split(args, tokenizer, dataset, split, template, gpt.config.max_position_embeddings)
                        for split in ("train", "dev", "test-student"))

    words = label_token_ids(tokenizer, args.label_words or LABEL_WORDS[dataset], num_labels) if args.cloze else None
    freeze_for_strategy(gpt, args, train_gpt=args.fine_tune_mode == "full-model")
    model = SentimentClassifier(gpt, num_labels, args.pooling, args.head_dropout, words).to(device)
    print(f"{dataset}: {len(train)} train, {len(dev)} dev, {len(test)} test; {count_parameters(model)}")

    run_dir = (args.run_dir or Path("runs") / f"{args.fine_tune_mode}") / dataset
    identity = {"task": f"sentiment-{dataset}", "model": gpt.config.to_dict(), "cloze": args.cloze,
                "pooling": args.pooling, "lora": [args.lora_rank, args.lora_targets, args.dora] if args.lora else None}
    run = Run(run_dir, identity, device, args.resume)

    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["input_ids"], batch["attention_mask"])

    def evaluate() -> dict[str, float]:
        scores = predict(model, dev.batches(4 * batch_size, shuffle=False), device, args.precision, logits,
                         len(dev), f"{dataset} dev")
        metrics = evaluation.classification_metrics(dev.labels, scores.argmax(-1).tolist(), range(num_labels))
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                "loss": F.cross_entropy(scores, torch.tensor(dev.labels)).item()}

    if args.epochs > 0:
        train_and_restore_best(
            model, args, lr, gpt.config.num_hidden_layers, run,
            train_batches=lambda epoch: train.batches(batch_size, shuffle=True, seed=args.seed + epoch),
            batches_per_epoch=-(-len(train) // batch_size),
            loss_fn=lambda batch: F.cross_entropy(logits(batch), batch["labels"], label_smoothing=args.label_smoothing),
            evaluate=evaluate,
            on_epoch_start=gradual_unfreezing(model, gpt.config.num_hidden_layers) if args.ulmfit else None)
    if args.lora:
        merge_lora(model.gpt)  # the adapters folded into the weights: plain GPT-2 speed at inference
    return write_predictions(args, dataset, model, logits, dev, test, batch_size, device, train)


def write_predictions(args, dataset: str, model: nn.Module, logits, dev: TokenizedDataset, test: TokenizedDataset,
                      batch_size: int, device: torch.device, train: TokenizedDataset) -> dict[str, float]:
    for split, data in (("dev", dev), ("test", test)):
        scores = predict(model, data.batches(4 * batch_size, shuffle=False), device, args.precision, logits,
                         len(data), f"{dataset} {split}")
        path = args.predictions_dir / f"{args.fine_tune_mode}-{dataset}-{split}-out.csv"
        write_on_main(evaluation.write_predictions, path, data.ids, scores.argmax(-1).tolist(),
                      evaluation.SENTIMENT_HEADER)
    results = evaluation.grade(args.predictions_dir / f"{args.fine_tune_mode}-{dataset}-dev-out.csv",
                               args.data_dir / f"ids-{dataset}-dev.csv")
    majority = max(set(train.labels), key=train.labels.count)
    baseline = sum(label == majority for label in dev.labels) / len(dev)
    print(f"{dataset} dev: accuracy {results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f} "
          f"(majority class {majority}: accuracy {baseline:.4f})")
    return results


def main() -> None:
    args = get_args()
    device = choose_device(args.use_gpu, args.precision)
    for dataset in (["sst", "cfimdb"] if args.dataset == "both" else [args.dataset]):
        run_dataset(args, dataset, device)


if __name__ == "__main__":
    main()
