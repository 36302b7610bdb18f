"""Predict with a finished run's best model on new inputs, read from a file (--input) or standard input:

    python predict.py runs/full-model/sst --input sentences.txt   # a sentence per line: label <TAB> probability
    python predict.py runs/paraphrase --input pairs.tsv           # question <TAB> question: yes|no <TAB> probability
    python predict.py runs/sonnets --input prompts.txt            # prompts apart by a blank line: each sonnet

The model is the run's own, rebuilt from its settings.json and best.pt as --ensemble rebuilds a run (its prompt,
demonstrations, label words, head and strategy, LoRA merged), so the inputs of a prediction file get its labels.
"""
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

import classifier
import paraphrase_detection as para
import sonnet_generation
from course.files import (SENTIMENT_NUM_LABELS, ParaphraseExample, SentimentExample, lines_from_bytes, read_lines,
                          read_paraphrase)
from datasets import sonnet_text
from flags import (FlagParser, UserError, add_flags, require, require_range, setting, settings_from_flags,
                   settings_parser, shown, user_errors_end_in_one_line)
from models.decoding import DecodingConfig
from training.device import choose_device
from training.ensemble import RUNTIME_SETTINGS, Member, load_best, member_settings, run_directory_problem
from training.model_setup import tokenizer_for
from training.run_dir import BEST_CHECKPOINT, SETTINGS_FILE, read_record, result_of, sha256
from training.settings import ModelSettings

# The script whose Settings and model each task's runs have, by the task its settings.json names.
TASK_SCRIPTS: dict[str, ModuleType] = {"sentiment-sst": classifier, "sentiment-cfimdb": classifier,
                                       "paraphrase": para, "sonnets": sonnet_generation}
RUNTIME_FLAGS = ("use_gpu", "precision")  # of the runtime settings, those this command shows
# The decoding flags of sonnet_generation.py (those it shows), each the run's own unless given.
DECODING_FLAGS = tuple(spec.name for spec in fields(DecodingConfig) if spec.name not in ("strategy", "max_lines"))


@dataclass(frozen=True)
class PredictSettings:
    """What to predict: the run, its inputs, and what to print."""
    run_dir: Path = field(metadata={"flag": "RUN_DIR"})
    input: Path | None = setting(None, "the inputs, one a line; sonnet prompts apart by a blank line (default: "
                                       "standard input)")
    probabilities: bool = setting(False, "print every class's probability after the label, in class order")
    batch_size: int | None = setting(None, "inputs per batch (default: the run's --eval_batch_size)")

    def __post_init__(self) -> None:
        problem = finished_run_problem(self.run_dir)
        require(self, "run_dir", problem is None, problem or "")
        require(self, "input", self.input is None or self.input.is_file(), "no such file")
        require_range(self, "batch_size", 1)


@dataclass(frozen=True)
class SonnetDecoding:
    """Sonnet runs: which decoding writes the sonnets; the run's own unless given (see sonnet_generation.py)."""
    decoding: str | None = setting(None, "mbr: pick among --mbr_samples samples by chrF; pool: greedy, beam, "
                                         "contrastive and the samples together, picked the same way",
                                   choices=sonnet_generation.DECODINGS)
    mbr_samples: int | None = setting(None, "samples for --decoding mbr and pool")

    def __post_init__(self) -> None:
        require_range(self, "mbr_samples", 1)


@dataclass(frozen=True)
class Settings:
    predict: PredictSettings
    sonnet: SonnetDecoding
    model: ModelSettings  # how the model runs (--use_gpu, --precision); the rest is the run's


def build_parser() -> FlagParser:
    runtime_only = tuple(spec.name for spec in fields(ModelSettings) if spec.name not in RUNTIME_FLAGS)
    parser = settings_parser(Settings, "predict.py", __doc__, {"predict": {"skip": ("run_dir",)},
                                                               "model": {"skip": runtime_only}})
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help=f"a finished run's directory ({SETTINGS_FILE} with its result, and {BEST_CHECKPOINT})")
    add_flags(parser, DecodingConfig, skip=("strategy", "max_lines"), defaults=dict.fromkeys(DECODING_FLAGS),
              helps={spec.name: f"{spec.metadata['help']} (default: the run's)" for spec in fields(DecodingConfig)})
    return parser


def get_settings(argv: list[str]) -> tuple[Settings, dict[str, Any]]:
    """The settings the flags ask for and the decoding flags given (the others stay the run's), every value
    checked, before any run or model is read."""
    flags = build_parser().parse_args(argv)
    decoding = {name: getattr(flags, name) for name in DECODING_FLAGS if getattr(flags, name) is not None}
    DecodingConfig(**decoding)  # checks each value given, in one line naming its flag
    return settings_from_flags(Settings, flags), decoding


# -----------------------------------------------------------------------------
# a finished run, rebuilt (export.py rebuilds runs this way too)

def finished_run_problem(directory: Path) -> str | None:
    """Why `directory` is not a run directory with a best checkpoint, or None when it is one."""
    problem = run_directory_problem(directory)
    runs = sorted(str(path.parent) for path in directory.glob(f"*/{SETTINGS_FILE}")) if directory.is_dir() else []
    if problem and runs:  # e.g. the classifier's --run_dir, which holds a run per dataset
        return f"{problem}; the runs in it are {', '.join(runs)}: give one of those"
    return problem


def from_this_command(runtime: ModelSettings) -> dict[str, dict[str, Any]]:
    """What a command that rebuilds a run decides for it: how the model runs (`runtime`'s settings). Nothing
    trains, so the run's --extra_train files are not needed."""
    return {"model": {name: getattr(runtime, name) for name in RUNTIME_SETTINGS}, "task": {"extra_train": ()}}


def finished_run(directory: Path, runtime: ModelSettings) -> Member:
    """The run in `directory` (`finished_run_problem` is None) with the settings it trained with, every default
    resolved, except how the model runs: `runtime`'s. Refused in one line naming the directory unless the run
    has finished and this code can rebuild its model."""
    record = read_record(directory, advice="train the run again")
    if result_of(record) is None:
        raise UserError(f"{directory}: its {SETTINGS_FILE} has no result, so the run has not finished (it is "
                        "training, or it stopped): repeat its command with --resume to finish it")
    script = TASK_SCRIPTS.get(record["task"])
    if script is None:
        raise UserError(f"{directory}: a run of {record['task']}, not of {', '.join(TASK_SCRIPTS)}")
    try:
        settings = member_settings(script.Settings, record["settings"], from_this_command(runtime))
    except UserError as error:
        raise UserError(f"{directory}: {error}") from None
    if script is classifier:
        settings = classifier.dataset_settings(settings, settings.task.dataset)
    else:
        settings = settings.resolved()
    return Member(directory, record["task"], record, settings)


def class_names(run: Member) -> list[str]:
    """The run's classes as predict.py prints them: a sentiment class's number, as the prediction files hold it; a
    paraphrase's answer."""
    if run.task == "paraphrase":
        return ["no", "yes"]
    return [str(label) for label in range(SENTIMENT_NUM_LABELS[run.settings.task.dataset])]


def demonstration_pairs(run: Member) -> list[ParaphraseExample]:
    """The training pairs a paraphrase run draws its --k_shot demonstrations from: its --para_train, which must
    be the file it trained with (by content); none without demonstrations."""
    task = run.settings.task
    if not task.k_shot:
        return []
    trained = run.record["data"].get("--para_train", {})
    if not task.para_train.is_file() or sha256(task.para_train) != trained.get("sha256"):
        raise UserError(f"{run.directory}: its prompt holds {task.k_shot} pairs of its --para_train "
                        f"{task.para_train}, which is not the file it trained with any more: restore that file")
    return read_paraphrase(task.para_train)


def best_model(run: Member, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> tuple[nn.Module, int]:
    """The run's model with its best weights (LoRA merged), in eval mode, and the best epoch. GPT-2 is built
    without reading pre-trained weights (neither a checkpoint nor the hub): best.pt holds every tensor."""
    settings = replace(run.settings, model=replace(run.settings.model, init="random"))
    script = TASK_SCRIPTS[run.task]
    if script is classifier:
        dataset = settings.task.dataset
        model = classifier.build_model(settings, dataset, classifier.cloze_words(tokenizer, settings.task, dataset))
    elif script is para:
        model = para.build_model(settings)
    else:
        model = sonnet_generation.build_model(settings)
    best_epoch = load_best(model.to(device), run, device)
    return model.eval(), best_epoch


# -----------------------------------------------------------------------------
# inputs, one a line, refused with their line

def input_lines(path: Path | None) -> tuple[str, list[str]]:
    """Where the inputs come from, as messages name it, and their lines: UTF-8, LF or CRLF line ends."""
    if path is not None:
        return str(path), read_lines(path)
    if sys.stdin.isatty():
        print("predict.py: reading the inputs from standard input; end them with Ctrl-D", file=sys.stderr)
    return "standard input", lines_from_bytes(sys.stdin.buffer.read(), "standard input")


def sentences(source: str, lines: list[str]) -> list[SentimentExample]:
    """One sentence a line (stripped, as the course files' sentences are), its id its line number."""
    examples = []
    for number, line in enumerate(lines, start=1):
        where = f"{source}, line {number}"
        if "\t" in line:
            raise UserError(f"{where}: a tab; give one sentence a line (a course file's row holds an id and a label "
                            "too: give its sentence alone)")
        if not line.strip():
            raise UserError(f"{where}: an empty line; give one sentence a line")
        examples.append(SentimentExample(str(number), line.strip(), None))
    return examples


def question_pairs(source: str, lines: list[str]) -> list[ParaphraseExample]:
    """Two questions a line, apart by one tab (stripped, as the course files' are)."""
    examples = []
    for number, line in enumerate(lines, start=1):
        questions = [question.strip() for question in line.split("\t")]
        if len(questions) != 2 or not all(questions):
            found = {1: "no tab", 2: "an empty question"}.get(len(questions), f"{len(questions) - 1} tabs")
            raise UserError(f"{source}, line {number}: {found}; give two questions a line, apart by one tab")
        examples.append(ParaphraseExample(str(number), *questions, None))
    return examples


def sonnet_prompts(source: str, lines: list[str]) -> dict[int, list[str]]:
    """Each prompt's lines (indentation kept, as in the course's sonnet files), by the number of its first line;
    prompts are apart by blank lines."""
    prompts: dict[int, list[str]] = {}
    first = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            first = None
            continue
        first = first or number
        prompts.setdefault(first, []).append(line.rstrip())
        if len(prompts[first]) >= sonnet_generation.SONNET_LINES:
            raise UserError(f"{source}, line {first}: a prompt of {sonnet_generation.SONNET_LINES} lines or more "
                            "leaves no line of the sonnet to write; put a blank line between prompts")
    return prompts


# -----------------------------------------------------------------------------
# predictions

def for_this_command(run: Member, settings: Settings, decoding: dict[str, Any]) -> Member:
    """The run with what this command changes: the batch size and, for sonnets, the decoding flags given. A flag
    that only another task's runs take is refused."""
    given = {name: value for name, value in asdict(settings.sonnet).items() if value is not None} | decoding
    sonnets = run.task == "sonnets"
    if given and not sonnets:
        name, value = next(iter(given.items()))
        raise UserError(f"--{name} {shown(value)}: only for a run of sonnets; {run.directory} is a run of {run.task}")
    require(settings.predict, "probabilities", not (sonnets and settings.predict.probabilities),
            f"only for a run that classifies; {run.directory} is a run of sonnets")
    train = run.settings.train
    changed = replace(run.settings, train=replace(train, eval_batch_size=settings.predict.batch_size or
                                                  train.eval_batch_size))
    if sonnets:  # each value checked again as the run's settings are rebuilt with it
        task_given = {name: given[name] for name in asdict(settings.sonnet) if name in given}
        changed = replace(changed, task=replace(changed.task, **task_given),
                          decoding=replace(changed.decoding, **decoding))
    return replace(run, settings=changed)


def classify(run: Member, model: nn.Module, examples: list[Any], source: str, tokenizer: PreTrainedTokenizerBase,
             demonstrations: list[ParaphraseExample], device: torch.device) -> torch.Tensor:
    """The logits of each example, as the run's own scoring gives them: in its prompt (with its demonstrations,
    both orders with --symmetric), in batches of --eval_batch_size."""
    settings, max_len = run.settings, model.gpt.config.max_position_embeddings
    if run.task == "paraphrase":
        template = para.prompt_template(settings.task, demonstrations, settings.train.seed)
        data = para.tokenized(settings.task, examples, Path(source), tokenizer, template, max_len)
        return para.pair_logits(model, data, settings, device, "pairs")
    data = classifier.tokenized(settings.task, source, examples, tokenizer, max_len)
    return classifier.class_logits(model, data, settings, device, "sentences")


def complete_sonnets(run: Member, model: nn.Module, prompts: dict[int, list[str]], source: str,
                     tokenizer: PreTrainedTokenizerBase, device: torch.device) -> dict[int, list[str]]:
    """Each prompt's sonnet, written by the run's SonnetWriter with its decoding, in batches of --eval_batch_size."""
    context = model.config.max_position_embeddings
    for number, lines in prompts.items():
        length = len(tokenizer.encode(sonnet_text(lines)))
        if length >= context:
            raise UserError(f"{source}, line {number}: the prompt is {length} tokens, which leaves no room in the "
                            f"model's context of {context}")
    writer = sonnet_generation.SonnetWriter(model, tokenizer, run.settings, device)
    numbers, size = list(prompts), run.settings.train.eval_batch_size
    sonnets: dict[int, list[str]] = {}
    for start in tqdm(range(0, len(numbers), size), desc="sonnets", leave=False, disable=len(numbers) <= size):
        sonnets |= writer.complete({number: prompts[number] for number in numbers[start:start + size]})
    return sonnets


def print_labels(logits: torch.Tensor, names: list[str], every_class: bool) -> None:
    """A line per example: its label (the run's decision: the largest logit) and its probability, or every
    class's."""
    probabilities = logits.float().softmax(-1)
    for label, row in zip(logits.argmax(-1).tolist(), probabilities):
        shown_probabilities = row.tolist() if every_class else [row[label].item()]
        print("\t".join([names[label], *(f"{p:.4f}" for p in shown_probabilities)]))


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("predict.py"):
        settings, decoding = get_settings(argv)
        run = for_this_command(finished_run(settings.predict.run_dir, settings.model), settings, decoding)
        script = TASK_SCRIPTS[run.task]
        source, lines = input_lines(settings.predict.input)
        read = {classifier: sentences, para: question_pairs, sonnet_generation: sonnet_prompts}[script]
        examples = read(source, lines)
        if not examples:
            raise UserError(f"{source}: no inputs; give them one a line")
        demonstrations = demonstration_pairs(run) if script is para else []
        device = choose_device(settings.model.use_gpu, settings.model.precision)
        tokenizer = tokenizer_for(run.settings.model)
        model, best_epoch = best_model(run, tokenizer, device)
        if script is sonnet_generation:
            sonnets = complete_sonnets(run, model, examples, source, tokenizer, device)
            print("\n\n".join("\n".join(lines) for lines in sonnets.values()))
        else:
            logits = classify(run, model, examples, source, tokenizer, demonstrations, device)
            print_labels(logits, class_names(run), settings.predict.probabilities)
        result = result_of(run.record)
        print(f"predict.py: {len(examples)} input(s) from {source}, predicted by the best model of {run.directory} "
              f"(epoch {best_epoch}: dev {result.metric} {result.best_metrics[result.metric]:.4f})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
