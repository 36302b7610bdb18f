"""Sentiment classification with GPT-2 on SST-5 and CFIMDB: train, keep the best dev epoch, write the
course's prediction files.

    python classifier.py --fine-tune-mode full-model --use_gpu
"""
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

import evaluation
from course.files import (SENTIMENT_HEADER, SENTIMENT_NUM_LABELS, SentimentExample, read_extra_rows, read_sentiment,
                          write_predictions)
from course.metrics import classification_metrics
from datasets import BATCH_PADDING, EpochBatches, TokenizedDataset, seeded_sample, tokenize_sentiment
from flags import (FREE, FlagParser, require, require_extra_train, require_template, require_writable, setting,
                   settings_from_flags, settings_parser, user_errors_end_in_one_line)
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
from training.run_dir import Run, plan_run, require_separate_run_paths
from training.settings import SHARED_GROUPS, ScriptSettings
from training.summary import Outcome, finish
from training.token_cache import cached_tokens

# What the course's help text advises (its code defaults to lr 1e-3 in both modes and batch 8): the README's
# table of defaults says why.
DEFAULTS = {
    "lr": {"last-linear-layer": 1e-3, "full-model": 1e-5},
    "batch_size": {"sst": 64, "cfimdb": 8},
}
CLOZE_TEMPLATE = "{sentence} All in all, the movie was"
LABEL_WORDS = {"sst": " terrible, bad, okay, good, great", "cfimdb": " bad, good"}
SPLITS = ("train", "dev", "test-student")
PREDICTED = {"dev": "dev", "test": "test-student"}  # each prediction file's split: the data file it answers
# With --ensemble, what the command decides for every run besides how it runs (the rest is each run's own, from
# its settings.json): the files read and written. Its --dataset and --fine-tune-mode must agree with the runs.
# An ensemble trains nothing: the runs' --extra_train files are not needed, and the command may not give any.
ENSEMBLE_FROM_COMMAND = {"model": RUNTIME_SETTINGS, "train": ("eval_batch_size",),
                         "task": ("data_dir", "predictions_dir", "extra_train")}
ENSEMBLE_FLAGS = {"model": RUNTIME_SETTINGS, "train": ("eval_batch_size",),
                  "task": ("data_dir", "predictions_dir", "dataset", "fine_tune_mode")}


@dataclass(frozen=True)
class ClassifierSettings(ClassificationObjective):
    """The task: which datasets, their files, and how GPT-2 turns a sentence into a label."""
    fine_tune_mode: str = setting("last-linear-layer", "train only the head, or GPT-2 too",
                                  choices=("last-linear-layer", "full-model"), flag="--fine-tune-mode")
    dataset: str = setting("both", "which dataset to train on; both runs SST, then CFIMDB",
                           choices=("sst", "cfimdb", "both"), on_resume=FREE)
    data_dir: Path = setting(Path("data"), "folder of the course's ids-{sst,cfimdb}-*.csv files", on_resume=FREE)
    predictions_dir: Path = setting(Path("predictions"), "where the prediction files go", on_resume=FREE)
    head_dropout: float = setting(0.3, "dropout before the decision (the course's --hidden_dropout_prob)",
                                  aliases=("--hidden_dropout_prob",))
    pooling: str = setting("last", "hidden states the head reads: the last real token (the course's), a mean, "
                                   "a max, learned attention, or a learned mix of mean and last", choices=POOLING)
    prompt: str | None = setting(None, "template around each sentence, e.g. 'Review: {sentence} Sentiment:'")
    cloze: bool = setting(False, "score label words through the language-model head instead of a new head; "
                                 "with --epochs 0 this is zero-shot")
    label_words: str | None = setting(None, f"comma-separated, one single-token word per class; default {LABEL_WORDS}")
    extra_train: tuple[Path, ...] = setting((), "more labelled training files in the course's format, added after "
                                                "--train_limit's sample (with --dataset sst or cfimdb)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt is not None:
            require_template(self, "prompt", {"sentence"})
        require(self, "pooling", not self.cloze or self.pooling == "last",
                "--cloze reads the last token's next-word logits; it takes no --pooling")
        require(self, "label_words", self.label_words is None or self.cloze, "only with --cloze")
        if self.label_words is not None:
            words = [word.strip() for word in self.label_words.split(",")]
            require(self, "label_words", all(words), "a word is empty: give one word per class, apart by commas")
            repeated = next((word for word in words if words.count(word) > 1), None)
            require(self, "label_words", repeated is None, f"{repeated!r} is given twice, so its second class could "
                                                           "never be predicted: give each class a word of its own")
        for dataset in self.datasets:
            if self.label_words is not None:
                count = len(self.label_words.split(","))
                require(self, "label_words", count == SENTIMENT_NUM_LABELS[dataset],
                        f"{dataset} has {SENTIMENT_NUM_LABELS[dataset]} classes, and needs as many words, not "
                        f"{count} (SST and CFIMDB need their own: run them one at a time with --dataset)")
            for split in SPLITS:
                require(self, "data_dir", self.data_file(dataset, split).is_file(),
                        f"holds no ids-{dataset}-{split}.csv (bash setup.sh copies the course data into data/)")
        require_writable(self, "predictions_dir", directory=True)
        require_extra_train(self)
        require(self, "extra_train", not self.extra_train or self.dataset != "both",
                "holds one dataset's labels: add --dataset sst or --dataset cfimdb")

    @property
    def datasets(self) -> list[str]:
        return ["sst", "cfimdb"] if self.dataset == "both" else [self.dataset]

    def data_file(self, dataset: str, split: str) -> Path:
        return self.data_dir / f"ids-{dataset}-{split}.csv"

    def predictions_file(self, dataset: str, split: str) -> Path:
        return self.predictions_dir / f"{self.fine_tune_mode}-{dataset}-{split}-out.csv"


@dataclass(frozen=True)
class Settings(ScriptSettings):
    run: RunOrEnsembleSettings
    task: ClassifierSettings  # `train`'s lr and batch_size are None until `dataset_settings` decides them

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.run.ensemble:
            refuse_member_flags(self, ENSEMBLE_FLAGS)
        task, strategy = self.task, self.strategy
        whole_model = task.fine_tune_mode == "full-model"
        for name in ("lora", "train_top_layers", "ulmfit"):
            require(strategy, name, whole_model or not getattr(strategy, name),
                    "trains part of GPT-2 (or unfreezes it): use --fine-tune-mode full-model")
        require(task, "cloze", not task.cloze or whole_model or self.train.epochs == 0,
                "has no new head to train in last-linear-layer mode; use --epochs 0 for zero-shot, or "
                "--fine-tune-mode full-model to train GPT-2 (all of it, or through --lora)")
        trains = self.train.epochs > 0 and not self.run.ensemble
        require_separate_run_paths(
            self, {"--data_dir": tuple(task.data_file(dataset, split) for dataset in task.datasets for split in SPLITS),
                   "--extra_train": task.extra_train, "--ensemble": self.run.ensemble},
            {"--predictions_dir": tuple(task.predictions_file(dataset, split) for dataset in task.datasets
                                        for split in PREDICTED)},
            tuple(self.run_directory(dataset) for dataset in task.datasets) if trains else ())

    def run_directory(self, dataset: str) -> Path:
        """Where `dataset` trains: its subfolder of --run_dir, by default of runs/{fine-tune-mode}."""
        return (self.run.run_dir or Path("runs") / self.task.fine_tune_mode) / dataset


def build_parser() -> FlagParser:
    return settings_parser(Settings, "classifier.py", __doc__, {
        "train": {"defaults": {"lr": None, "batch_size": None},
                  "helps": {"lr": "default: 1e-3 last-linear-layer, 1e-5 full-model",
                            "batch_size": "default: 64 for SST, 8 for CFIMDB; with --dataset both it is SST's, "
                                          "and CFIMDB keeps 8 (as in the course)"}},
        "strategy": {"skip": ("prefix_length",)},
        "run": {"helps": {"run_dir": "its DATASET subfolder holds each dataset's run "
                                     "(default: runs/{fine-tune-mode})"}},
    }, last=SHARED_GROUPS)


def get_settings(argv: list[str]) -> Settings:
    """The settings the flags ask for, every value checked, before any data or model is loaded."""
    return settings_from_flags(Settings, build_parser().parse_args(argv))


def dataset_settings(settings: Settings, dataset: str) -> Settings:
    """The settings of one dataset's run, every default decided (`ScriptSettings.resolved`): our learning rate
    and batch size unless given. As in the course, CFIMDB after SST (--dataset both) keeps batch 8 whatever
    --batch_size says: its reviews run up to 500 tokens, and SST's batch of them may not fit the GPU."""
    train = settings.train
    if dataset == "cfimdb" and settings.task.dataset == "both":
        train = replace(train, batch_size=None)
    one = replace(settings, task=replace(settings.task, dataset=dataset), train=train)
    return one.resolved(lr=DEFAULTS["lr"][settings.task.fine_tune_mode], batch_size=DEFAULTS["batch_size"][dataset])


def label_token_ids(tokenizer: PreTrainedTokenizerBase, task: ClassifierSettings, dataset: str) -> list[int]:
    """One token id per class: the cloze label words, each a single token after a space."""
    ids = []
    for word in (task.label_words or LABEL_WORDS[dataset]).split(","):
        tokens = tokenizer.encode(" " + word.strip())
        require(task, "label_words", len(tokens) == 1,
                f"{word.strip()!r} is {len(tokens)} tokens; cloze needs single-token words")
        ids += tokens
    return ids


def cloze_words(tokenizer: PreTrainedTokenizerBase, task: ClassifierSettings, dataset: str) -> list[int] | None:
    """The label words' token ids in cloze mode; None with a new head."""
    return label_token_ids(tokenizer, task, dataset) if task.cloze else None


def build_model(settings: Settings, dataset: str, words: list[int] | None) -> GPT2Classifier:
    """The classifier that `settings` describe for `dataset`: GPT-2, the fine-tuning strategy, and a new head on
    the pooled hidden states (the course reads the last real token) or, in cloze mode, the language-model
    head's logits of the label words' token ids `words`. Training builds it from the command's settings; an
    ensemble builds each run's from the settings that run recorded."""
    task = settings.task
    gpt = build_gpt2(settings.model)
    apply_strategy(gpt, settings.strategy, train_gpt=task.fine_tune_mode == "full-model")
    return GPT2Classifier(gpt, SENTIMENT_NUM_LABELS[dataset], task.pooling, task.head_dropout, task.dropout_samples,
                          words)


def task_name(dataset: str) -> str:
    """A run's task, as its checkpoints and settings.json name it."""
    return f"sentiment-{dataset}"


def read_dataset(settings: Settings, dataset: str) -> dict[str, list[SentimentExample]]:
    """Every split of `dataset`, read before any dataset trains; the training split sampled by --train_limit,
    then the --extra_train rows."""
    task, num_labels = settings.task, SENTIMENT_NUM_LABELS[dataset]
    examples = {split: read_sentiment(task.data_file(dataset, split), num_labels, labelled=split != "test-student")
                for split in SPLITS}
    extra = read_extra_rows(task.extra_train, lambda path: read_sentiment(path, num_labels),
                            (task.data_file(dataset, "train"), examples["train"]),
                            {f"--data_dir {task.data_file(dataset, split)}": examples[split]
                             for split in ("dev", "test-student")})
    examples["train"] = seeded_sample(examples["train"], settings.train.train_limit, settings.train.seed) + extra
    return examples


def sentence_template(task: ClassifierSettings) -> str:
    """The prompt each sentence goes into: --prompt, else the cloze template in cloze mode, else the sentence."""
    return task.prompt or (CLOZE_TEMPLATE if task.cloze else "{sentence}")


def tokenized(task: ClassifierSettings, source: str, examples: list[SentimentExample],
              tokenizer: PreTrainedTokenizerBase, max_len: int) -> TokenizedDataset:
    """`examples` in the task's prompt, tokenised once; `source` names where they come from, in warnings."""
    return cached_tokens(tokenize_sentiment, examples, tokenizer, sentence_template(task), max_len, source,
                         task.course_preprocessing)


def sentence_logits(model: GPT2Classifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)["logits"]


def class_logits(model: GPT2Classifier, data: TokenizedDataset, settings: Settings, device: torch.device,
                 desc: str) -> torch.Tensor:
    """The logits of every example of `data`, in order, in batches of --eval_batch_size (no gradients)."""
    return predict(model, data.batches(settings.train.eval_batch_size, shuffle=False), device,
                   settings.model.precision, lambda batch: sentence_logits(model, batch), len(data), desc)


def dev_metrics(dev: TokenizedDataset, logits: torch.Tensor, num_labels: int) -> dict[str, float]:
    metrics = classification_metrics(dev.labels, logits.argmax(-1).tolist(), range(num_labels))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "loss": F.cross_entropy(logits, torch.tensor(dev.labels)).item()}


def write_and_grade(task: ClassifierSettings, dataset: str, ids: dict[str, list[str]],
                    labels: dict[str, list[int]]) -> dict[str, Any]:
    """Write the dev and test prediction files (by `PREDICTED` split) and grade the dev file."""
    for split in PREDICTED:
        write_on_main(write_predictions, task.predictions_file(dataset, split), ids[split], labels[split],
                      SENTIMENT_HEADER)
    return evaluation.grade(task.predictions_file(dataset, "dev"), task.data_file(dataset, "dev"),
                            num_labels=SENTIMENT_NUM_LABELS[dataset])


def run_dataset(settings: Settings, examples: dict[str, list[SentimentExample]], run: Run | None,
                tokenizer: PreTrainedTokenizerBase, words: list[int] | None, device: torch.device) -> Outcome:
    """Train on the `examples` of the dataset of `settings` (`dataset_settings`) unless `run` is None, write its
    prediction files and grade the dev file. `words` are the cloze label words' token ids."""
    task, train, dataset = settings.task, settings.train, settings.task.dataset
    seed_everything(train.seed)
    num_labels = SENTIMENT_NUM_LABELS[dataset]
    model = build_model(settings, dataset, words).to(device)
    max_len = model.gpt.config.max_position_embeddings
    data = {split: tokenized(task, str(task.data_file(dataset, split)), examples[split], tokenizer, max_len)
            for split in SPLITS}
    train_data, dev = data["train"], data["dev"]
    print(f"{dataset}: {len(train_data)} train, {len(dev)} dev, {len(data['test-student'])} test; "
          f"{count_parameters(model)}")

    dev_logits = DevOutputs(lambda: class_logits(model, dev, settings, device, f"{dataset} dev"))

    def evaluate() -> dict[str, float]:
        return dev_metrics(dev, dev_logits.after_epoch(), num_labels)

    log = None
    if run is not None:
        num_layers = model.gpt.config.num_hidden_layers
        unfreeze = gradual_unfreezing(model, num_layers) if settings.strategy.ulmfit else None
        log = train_and_restore_best(model, run, train, settings.model.precision, num_layers,
                                     EpochBatches(train_data, train.batch_size, train.seed),
                                     Task(lambda batch: classification_loss(model, batch, task), evaluate,
                                          on_epoch_start=unfreeze))

    logits = {"dev": dev_logits.restored(run, log, exact=not settings.strategy.lora),
              "test": class_logits(model, data[PREDICTED["test"]], settings, device, f"{dataset} test")}
    labels = {split: logits[split].argmax(-1).tolist() for split in PREDICTED}
    results = write_and_grade(task, dataset, {split: data[source].ids for split, source in PREDICTED.items()}, labels)
    majority = max(set(train_data.labels), key=train_data.labels.count)
    baseline = sum(label == majority for label in dev.labels) / len(dev)
    print(f"{dataset} dev: accuracy {results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f} "
          f"(majority class {majority}: accuracy {baseline:.4f})")
    answered = {task.predictions_file(dataset, split): task.data_file(dataset, source)
                for split, source in PREDICTED.items()}
    return Outcome(dataset, run, log, answered,
                   ("grade", task.predictions_file(dataset, "dev"), task.data_file(dataset, "dev")))


def plan_dataset_run(settings: Settings, command: list[str], device: torch.device) -> Run | None:
    """Where and how the dataset of `settings` (`dataset_settings`) trains (None without training); refused at
    start-up, before any dataset trains."""
    if settings.train.epochs == 0:
        return None
    task, dataset = settings.task, settings.task.dataset
    directory = settings.run_directory(dataset)
    data = {f"--data_dir ({split})": task.data_file(dataset, split) for split in ("train", "dev")}
    data |= {f"--extra_train ({path})": path for path in task.extra_train}
    return plan_run(settings, directory, task_name(dataset), data, command, device)


# -----------------------------------------------------------------------------
# ensembles (--ensemble)

def ensemble_members(settings: Settings) -> list[Member]:
    """The --ensemble runs, each with the settings it trained with; refused at start-up unless they are runs of
    one dataset (--dataset's, when given) and one of them trained in --fine-tune-mode, which names the files."""
    members = read_members(Settings, settings, [task_name(dataset) for dataset in settings.task.datasets],
                           ENSEMBLE_FROM_COMMAND)
    modes = sorted({member.settings.task.fine_tune_mode for member in members})
    require(settings.task, "fine_tune_mode", settings.task.fine_tune_mode in modes,
            f"names the ensemble's prediction files, and no --ensemble run trained in this mode (they trained in "
            f"{' and '.join(modes)})")
    return members


def run_ensemble(settings: Settings, members: list[Member], examples: dict[str, list[SentimentExample]],
                 device: torch.device, command: list[str]) -> None:
    """Average the class probabilities of the runs' best checkpoints on this command's dev and test files,
    write the prediction files, and log each run's dev metrics and the ensemble's beside them."""
    dataset = members[0].settings.task.dataset
    vote = Vote(("accuracy", "macro_f1"))
    for member in members:
        vote_of(member, dataset, examples, device, vote)
    ids = {split: [example.id for example in examples[source]] for split, source in PREDICTED.items()}
    graded = write_and_grade(settings.task, dataset, ids, vote.labels())
    vote.report(members[0].task, graded, {split: settings.task.predictions_file(dataset, split) for split in PREDICTED},
                command)


def vote_of(member: Member, dataset: str, examples: dict[str, list[SentimentExample]], device: torch.device,
            vote: Vote) -> None:
    """Add one run's logits on dev and test to `vote`, the run as it trained: its tokenizer, prompt, model
    and best checkpoint. Its model is freed on return, before the next run's is built."""
    settings = dataset_settings(member.settings, dataset)
    tokenizer = tokenizer_for(settings.model)
    model = build_model(settings, dataset, cloze_words(tokenizer, settings.task, dataset)).to(device)
    best_epoch = load_best(model, member, device)
    max_len = model.gpt.config.max_position_embeddings
    logits, data = {}, {}
    for split, source in PREDICTED.items():
        data[split] = tokenized(settings.task, str(settings.task.data_file(dataset, source)), examples[source],
                                tokenizer, max_len)
        logits[split] = class_logits(model, data[split], settings, device, f"{member.directory} {split}")
    vote.add(member, best_epoch, logits, dev_metrics(data["dev"], logits["dev"], SENTIMENT_NUM_LABELS[dataset]))


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("classifier.py"):
        settings, command = get_settings(argv), ["classifier.py", *argv]
        if settings.run.ensemble:
            members = ensemble_members(settings)
            examples = read_dataset(settings, members[0].settings.task.dataset)
            device = choose_device(settings.model.use_gpu, settings.model.precision, settings.model.deterministic)
            run_ensemble(settings, members, examples, device, command)
            return
        per_dataset = {dataset: dataset_settings(settings, dataset) for dataset in settings.task.datasets}
        examples = {dataset: read_dataset(one, dataset) for dataset, one in per_dataset.items()}
        device = choose_device(settings.model.use_gpu, settings.model.precision, settings.model.deterministic)
        runs = {dataset: plan_dataset_run(one, command, device) for dataset, one in per_dataset.items()}
        tokenizer = tokenizer_for(settings.model)
        words = {dataset: cloze_words(tokenizer, settings.task, dataset) for dataset in runs}
        finish([run_dataset(per_dataset[dataset], examples[dataset], run, tokenizer, words[dataset], device)
                for dataset, run in runs.items()])


if __name__ == "__main__":
    main(sys.argv[1:])
