"""Quora paraphrase detection with GPT-2: by default a cloze prompt answered "yes" or "no" through the
language-model head; train, keep the best dev epoch, write the course's prediction files.

    python paraphrase_detection.py --use_gpu
"""
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

import evaluation
from config import NO_ID, YES_ID
from course.files import PARAPHRASE_HEADER, ParaphraseExample, read_extra_rows, read_paraphrase, write_predictions
from course.metrics import classification_metrics
from datasets import (BATCH_PADDING, EpochBatches, TokenizedDataset, as_written, course_question, seeded_sample,
                      tokenize_paraphrase)
from flags import (FREE, FlagParser, UserError, require, require_extra_train, require_input_file, require_range,
                   require_template, require_writable, setting, settings_from_flags, settings_parser,
                   user_errors_end_in_one_line)
from models.classification import GPT2Classifier
from modules.pooling import POOLING
from training.checkpoints import seed_everything
from training.device import choose_device
from training.distributed import write_on_main
from training.ensemble import (RUNTIME_SETTINGS, Member, RunOrEnsembleSettings, Vote, load_best, read_members,
                               refuse_member_flags)
from training.inference import DevOutputs, predict
from training.loop import Task, train_and_restore_best
from training.model_setup import apply_strategy, build_gpt2, count_parameters, gradual_unfreezing, tokenizer_for
from training.objectives import ClassificationObjective, classification_loss
from training.run_dir import plan_run, require_separate_run_paths, sha256
from training.settings import SHARED_GROUPS, ScriptSettings
from training.summary import Outcome, finish
from training.token_cache import cached_tokens

PROMPT = 'Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no": '
NO_YES = [NO_ID, YES_ID]  # class 0 is the token "no", class 1 the token "yes"
FULL_QUORA_PAIRS = 283_003  # the course's training set, for the projected epoch time
TASK = "paraphrase"  # as checkpoints and settings.json name it
# With --ensemble, what the command decides for every run besides how it runs (the rest is each run's own, from
# its settings.json): the files read and written, and the scoring batch.
ENSEMBLE_FLAGS = {"model": RUNTIME_SETTINGS, "train": ("eval_batch_size",),
                  "task": ("para_train", "para_dev", "para_test", "para_dev_out", "para_test_out")}
# An ensemble trains nothing: the runs' --extra_train files are not needed, and the command may not give any.
ENSEMBLE_FROM_COMMAND = {**ENSEMBLE_FLAGS, "task": (*ENSEMBLE_FLAGS["task"], "extra_train")}


@dataclass(frozen=True)
class ParaphraseSettings(ClassificationObjective):
    """The task: its files, the prompt, the decision head and the losses."""
    para_train: Path = setting(Path("data/quora-train.csv"), "labelled training pairs", on_resume=FREE)
    para_dev: Path = setting(Path("data/quora-dev.csv"), "labelled dev pairs: pick the best epoch",
                             on_resume=FREE)
    para_test: Path = setting(Path("data/quora-test-student.csv"), "unlabelled test pairs", on_resume=FREE)
    para_dev_out: Path = setting(Path("predictions/para-dev-output.csv"), "dev predictions file", on_resume=FREE)
    para_test_out: Path = setting(Path("predictions/para-test-output.csv"), "test predictions file",
                                  on_resume=FREE)
    head: str = setting("cloze", "cloze: yes/no logits of the language-model head; else a linear head on this "
                                 "pooling of the hidden states", choices=("cloze", *POOLING))
    prompt: str = setting(PROMPT, "template with fields {s1} and {s2}")
    symmetric: bool = setting(False, "GPT-1's symmetric input: score both sentence orders and average the logits")
    k_shot: int = setting(0, "prepend k answered training pairs to every prompt (with --epochs 0: k-shot)")
    extra_train: tuple[Path, ...] = setting((), "more labelled training pairs in the course's format, added after "
                                                "--train_limit's sample")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("para_train", "para_dev", "para_test"):
            require_input_file(self, name)
        for name in ("para_dev_out", "para_test_out"):
            require_writable(self, name)
        require_template(self, "prompt", {"s1", "s2"})
        require_range(self, "k_shot", 0, note="0 turns it off")
        require_extra_train(self)


@dataclass(frozen=True)
class Settings(ScriptSettings):
    run: RunOrEnsembleSettings
    task: ParaphraseSettings

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.run.ensemble:
            refuse_member_flags(self, ENSEMBLE_FLAGS)
        task, trains = self.task, self.train.epochs > 0 and not self.run.ensemble
        require_separate_run_paths(
            self, {"--para_train": task.para_train, "--para_dev": task.para_dev, "--para_test": task.para_test,
                   "--extra_train": task.extra_train, "--ensemble": self.run.ensemble},
            {"--para_dev_out": task.para_dev_out, "--para_test_out": task.para_test_out},
            (self.run_directory(),) if trains else ())

    def run_directory(self) -> Path:
        """Where the run trains: --run_dir, by default runs/paraphrase."""
        return self.run.run_dir or Path("runs") / "paraphrase"


def build_parser() -> FlagParser:
    return settings_parser(Settings, "paraphrase_detection.py", __doc__, {
        "strategy": {"skip": ("prefix_length",)},
        "run": {"helps": {"run_dir": "the run's directory (default: runs/paraphrase)"}},
    }, last=SHARED_GROUPS)


def get_settings(argv: list[str]) -> Settings:
    """The settings the flags ask for, every value checked, before any data or model is loaded."""
    return settings_from_flags(Settings, build_parser().parse_args(argv))


def build_model(settings: Settings) -> GPT2Classifier:
    """The model that `settings` describe: GPT-2, the fine-tuning strategy and the decision, between the
    logits of "no" and "yes" (cloze) or by a linear head on pooled states. Training builds it from the
    command's settings; an ensemble builds each run's from the settings that run recorded."""
    task, cloze = settings.task, settings.task.head == "cloze"
    gpt = build_gpt2(settings.model)
    apply_strategy(gpt, settings.strategy)
    return GPT2Classifier(gpt, 2, "last" if cloze else task.head, task.head_dropout, task.dropout_samples,
                          NO_YES if cloze else None)


def prompt_template(task: ParaphraseSettings, train_examples: list[ParaphraseExample], seed: int) -> str:
    """The prompt of every pair: --prompt, after --k_shot answered training pairs drawn with `seed`."""
    if not task.k_shot:
        return task.prompt
    return demonstrations(train_examples, task.k_shot, seed, task.prompt, task.course_preprocessing) + task.prompt


def demonstrations(examples, k: int, seed: int, prompt: str, course_preprocessing: bool = False) -> str:
    """k answered training pairs, as template text: braces doubled so format fields stay literal. Their questions
    are prepared as the pairs' own (`course_question` with `course_preprocessing`)."""
    prepare = course_question if course_preprocessing else as_written
    answered = [prompt.format(s1=prepare(e.sentence1), s2=prepare(e.sentence2)) + ("yes" if e.label else "no")
                + "\n" for e in random.Random(seed).sample(examples, k)]
    return "".join(answered).replace("{", "{{").replace("}", "}}")


def paraphrase_loss(model: GPT2Classifier, batch: dict[str, torch.Tensor], task: ParaphraseSettings) -> torch.Tensor:
    """The classification objective, on the logits of each pair (both orders averaged with --symmetric)."""
    return classification_loss(model, batch, task, lambda logits: combine_orders(logits, task.symmetric))


def combine_orders(logits: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """With symmetric input a batch holds both orders of each pair: average their logits."""
    return logits.view(2, -1, logits.size(-1)).mean(0) if symmetric else logits


def padding_fraction(batches: list[dict[str, torch.Tensor]]) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def tokenized(task: ParaphraseSettings, examples: list[ParaphraseExample], path: Path,
              tokenizer: PreTrainedTokenizerBase, template: str, max_len: int) -> TokenizedDataset:
    """The pairs of `path` in `template` (both orders with --symmetric), tokenised once."""
    return cached_tokens(tokenize_paraphrase, examples, tokenizer, template, max_len, str(path), task.symmetric,
                         task.course_preprocessing)


def pair_logits(model: GPT2Classifier, data: TokenizedDataset, settings: Settings, device: torch.device,
                desc: str) -> torch.Tensor:
    """The [no, yes] logits of every pair of `data`, in order (with --symmetric, averaged over both orders), in
    batches of --eval_batch_size."""
    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
        return combine_orders(out["logits"], settings.task.symmetric)

    return predict(model, data.batches(settings.train.eval_batch_size, shuffle=False), device,
                   settings.model.precision, logits, len(data), desc)


def dev_metrics(dev: TokenizedDataset, logits: torch.Tensor) -> dict[str, float]:
    metrics = classification_metrics(dev.labels, logits.argmax(-1).tolist(), [0, 1])
    # the dev loss tells a blown-up model after a NaN (see training.loop's advice)
    return {**{name: metrics[name] for name in ("accuracy", "f1", "precision", "recall")},
            "loss": torch.nn.functional.cross_entropy(logits, torch.tensor(dev.labels)).item()}


def write_and_grade(task: ParaphraseSettings, ids: dict[str, list[str]],
                    labels: dict[str, list[int]]) -> dict[str, Any]:
    """Write --para_dev_out and --para_test_out (class 1 as the token id of "yes", 0 as "no", the course's
    encoding) and grade the dev file."""
    for split, path in (("dev", task.para_dev_out), ("test", task.para_test_out)):
        answers = [NO_YES[label] for label in labels[split]]
        write_on_main(write_predictions, path, ids[split], answers, PARAPHRASE_HEADER)
    return evaluation.grade(task.para_dev_out, task.para_dev, num_labels=len(NO_YES))


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("paraphrase_detection.py"):
        settings = get_settings(argv)
        if not settings.run.ensemble:  # an ensemble's runs decide their own
            settings = settings.resolved()
        task, train = settings.task, settings.train
        members = ensemble_members(settings) if settings.run.ensemble else []
        train_examples = read_paraphrase(task.para_train)
        require(task, "k_shot", task.k_shot <= len(train_examples),
                f"more than the {len(train_examples)} pairs of --para_train")
        examples = {"dev": read_paraphrase(task.para_dev), "test": read_paraphrase(task.para_test, labelled=False)}
        extra = read_extra_rows(task.extra_train, read_paraphrase, (task.para_train, train_examples),
                                {f"--para_dev {task.para_dev}": examples["dev"],
                                 f"--para_test {task.para_test}": examples["test"]})
        device = choose_device(settings.model.use_gpu, settings.model.precision, settings.model.deterministic)
        if members:
            run_ensemble(settings, members, train_examples, examples, device, ["paraphrase_detection.py", *argv])
            return
        run = None
        if train.epochs > 0:
            data = {"--para_train": task.para_train, "--para_dev": task.para_dev,
                    **{f"--extra_train ({path})": path for path in task.extra_train}}
            run = plan_run(settings, settings.run_directory(), TASK, data,
                           ["paraphrase_detection.py", *argv], device)
        seed_everything(train.seed)
        tokenizer = tokenizer_for(settings.model)
        model = build_model(settings).to(device)
        max_len = model.gpt.config.max_position_embeddings
        template = prompt_template(task, train_examples, train.seed)
        train_examples = seeded_sample(train_examples, train.train_limit, train.seed) + extra
        train_data, dev, test = (tokenized(task, pairs, path, tokenizer, template, max_len) for pairs, path in (
            (train_examples, task.para_train), (examples["dev"], task.para_dev), (examples["test"], task.para_test)))
        print(f"{len(train_data)} train, {len(dev)} dev, {len(test)} test pairs; {count_parameters(model)}")

        dev_logits = DevOutputs(lambda: pair_logits(model, dev, settings, device, "dev"))

        def evaluate() -> dict[str, float]:
            return dev_metrics(dev, dev_logits.after_epoch())

        log = None
        if run is not None:
            batches = EpochBatches(train_data, train.batch_size, train.seed)
            padding = padding_fraction(batches(0))
            num_layers = model.gpt.config.num_hidden_layers
            unfreeze = gradual_unfreezing(model, num_layers) if settings.strategy.ulmfit else None
            log = train_and_restore_best(model, run, train, settings.model.precision, num_layers, batches,
                                         Task(lambda batch: paraphrase_loss(model, batch, task), evaluate,
                                              on_epoch_start=unfreeze))
            report_speed(log.records, train_data, padding)
        logits = {"dev": dev_logits.restored(run, log, exact=not settings.strategy.lora),
                  "test": pair_logits(model, test, settings, device, task.para_test_out.name)}
        labels = {split: split_logits.argmax(-1).tolist() for split, split_logits in logits.items()}
        results = write_and_grade(task, {"dev": dev.ids, "test": test.ids}, labels)
        majority = sum(label == 0 for label in dev.labels) / len(dev)
        print(f"dev: accuracy {results['accuracy']:.4f}, F1 {results['f1']:.4f}, "
              f"precision {results['precision']:.4f}, recall {results['recall']:.4f} "
              f"(majority class 'not duplicate': accuracy {majority:.4f})")
        finish([Outcome("paraphrase", run, log, {task.para_dev_out: task.para_dev, task.para_test_out: task.para_test},
                        ("grade", task.para_dev_out, task.para_dev))])


def report_speed(records: list[dict], train: TokenizedDataset, padding: float) -> None:
    """Training tokens per second, padding, and the epoch time that speed gives the full 283k-pair set."""
    epochs = [r for r in records if r["split"] == "epoch"]
    speed = epochs[-1]["tokens_per_second"]
    tokens_per_pair = sum(len(t) for t in train.tokens) / len(train) * (2 if train.mirror else 1)
    projected = FULL_QUORA_PAIRS * tokens_per_pair / speed
    print(f"training speed: {speed:,.0f} tokens/s; {padding:.1%} of the batches' tokens are padding; "
          f"{tokens_per_pair:.1f} tokens a pair, so an epoch of the full {FULL_QUORA_PAIRS:,} pairs would take "
          f"{projected / 60:.1f} minutes")


# -----------------------------------------------------------------------------
# ensembles (--ensemble)

def ensemble_members(settings: Settings) -> list[Member]:
    """The --ensemble runs, each with the settings it trained with; refused at start-up unless all are
    paraphrase runs, and a run whose prompt holds --k_shot training pairs gets the same ones again: this
    command's --para_train must be the file it trained with (by content)."""
    members = read_members(Settings, settings, [TASK], ENSEMBLE_FROM_COMMAND)
    shots = [member for member in members if member.settings.task.k_shot]
    now = sha256(settings.task.para_train) if shots else None
    for member in shots:
        trained = member.record["data"].get("--para_train", {})
        if trained.get("sha256") != now:
            raise UserError(f"--ensemble {member.directory}: its prompt holds {member.settings.task.k_shot} pairs of "
                            f"its --para_train {trained.get('path')}, and --para_train {settings.task.para_train} "
                            "differs from it: give the file it trained with")
    return members


def run_ensemble(settings: Settings, members: list[Member], train_examples: list[ParaphraseExample],
                 examples: dict[str, list[ParaphraseExample]], device: torch.device, command: list[str]) -> None:
    """Average the [no, yes] probabilities of the runs' best checkpoints on this command's dev and test pairs,
    write the prediction files, and log each run's dev metrics and the ensemble's beside them."""
    task = settings.task
    vote = Vote(("accuracy", "f1", "precision", "recall"))
    for member in members:
        vote_of(member, train_examples, examples, device, vote)
    graded = write_and_grade(task, {split: [pair.id for pair in pairs] for split, pairs in examples.items()},
                             vote.labels())
    vote.report(TASK, graded, {"dev": task.para_dev_out, "test": task.para_test_out}, command)


def vote_of(member: Member, train_examples: list[ParaphraseExample], examples: dict[str, list[ParaphraseExample]],
            device: torch.device, vote: Vote) -> None:
    """Add one run's logits on dev and test to `vote`, the run as it trained: its tokenizer, prompt (with its
    own demonstrations), model and best checkpoint. Its model is freed on return, before the next run's is built."""
    settings = member.settings.resolved()
    task = settings.task
    tokenizer = tokenizer_for(settings.model)
    model = build_model(settings).to(device)
    best_epoch = load_best(model, member, device)
    template = prompt_template(task, train_examples, settings.train.seed)
    max_len = model.gpt.config.max_position_embeddings
    logits, data = {}, {}
    for split, path in (("dev", task.para_dev), ("test", task.para_test)):
        data[split] = tokenized(task, examples[split], path, tokenizer, template, max_len)
        logits[split] = pair_logits(model, data[split], settings, device, f"{member.directory} {split}")
    vote.add(member, best_epoch, logits, dev_metrics(data["dev"], logits["dev"]))


if __name__ == "__main__":
    main(sys.argv[1:])
