"""Is a predictions folder complete and correct for handing in? `check_predictions` reads every file the
course grades against the input file it answers and names everything missing or wrong at once, so that
`prepare_submit.py` zips only a folder the course's grader can score.

The graded files (in the predictions folder) and the inputs they answer (in the data folder):

    {mode}-sst-{dev,test}-out.csv      ids-sst-{dev,test-student}.csv      labels 0..4
    {mode}-cfimdb-{dev,test}-out.csv   ids-cfimdb-{dev,test-student}.csv   labels 0..1
    para-{dev,test}-output.csv         quora-{dev,test-student}.csv        labels 8505/3919 or 1/0
    generated_sonnets.txt              sonnets_held_out.txt
    generated_sonnets_dev.txt          sonnets_held_out_dev.txt            (checked when present)

where mode is full-model or last-linear-layer: the four files of one mode are required (`SENTIMENT_RULE`). Beside
a complete mode, another mode's files are checked as far as they are there, and its missing ones are a warning:
they are not needed, but a student may have meant to hand them in. The commands named for missing files run on
the machine at hand: `--use_gpu` only where there is an NVIDIA GPU (`gpu_flag`).
"""
import shutil
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from course.files import (PARAPHRASE_ANSWERS, SENTIMENT_NUM_LABELS, paraphrase_labels, read_paraphrase,
                          read_predictions, read_sentiment, some_of)
from course.sonnets import read_sonnets
from flags import UserError

MODES = ("full-model", "last-linear-layer")
INPUT_SPLITS = {"dev": "dev", "test": "test-student"}  # a prediction file's split -> its input file's
SENTIMENT_RULE = ("the hand-in needs all four sentiment files of one fine-tune mode, "
                  "{mode}-{sst,cfimdb}-{dev,test}-out.csv for full-model or for last-linear-layer")


@dataclass(frozen=True)
class Graded:
    """A file the course grades: its name in the predictions folder, the input file (in the data folder)
    whose ids or prompts it answers, its check (what the file holds, or a `UserError`), and the command
    that writes it."""
    name: str
    input_name: str
    check: Callable[[Path, Path], str]
    command: str


def check_predictions(predictions_dir: Path, data_dir: Path) -> list[str]:
    """One line per graded file saying what it holds ('ok  predictions/para-dev-output.csv: 2,000 ids'), and a
    'warning  ' line for a mode with files missing beside a complete one; or one `UserError` listing every
    problem of every file, separated by '; ', so that a student sees all of them at once rather than one per
    attempt."""
    complete, partial = sentiment_modes(predictions_dir)
    report, problems, missing = check_files(graded_files(predictions_dir, complete or partial), predictions_dir,
                                            data_dir)
    notes = []
    for mode in partial if complete else []:  # beside a complete mode, checked as far as it is there
        files = sentiment_files(mode)
        more_report, more_problems, more_missing = check_files(files, predictions_dir, data_dir)
        report, problems = report + more_report, problems + more_problems
        there = len(files) - sum(len(paths) for paths in more_missing.values())
        notes.append(f"warning  {mode} has {there} of its {len(files)} sentiment files, and {complete[0]} has all "
                     f"of them, so the hand-in goes ahead ({SENTIMENT_RULE}): "
                     + "; ".join(missing_lines(more_missing)))
    problems = sentiment_problem(predictions_dir, complete, partial) + missing_lines(missing) + problems
    if problems:
        raise UserError("not ready to hand in: " + "; ".join(problems))
    return report + notes


def check_files(files: list[Graded], predictions_dir: Path, data_dir: Path) -> tuple[list[str], list[str],
                                                                                      dict[str, list[str]]]:
    """Each of `files` that is there checked: (a line for each one that passes, the problems of those that
    don't, the paths of the missing ones by the command that writes them)."""
    report, problems, missing = [], [], {}
    for graded in files:
        path = predictions_dir / graded.name
        if not path.is_file():
            missing.setdefault(graded.command, []).append(str(path))
            continue
        try:
            report.append(f"ok  {path}: {graded.check(path, input_file(data_dir, graded.input_name))}")
        except UserError as error:
            problems.append(str(error))
    return report, problems, missing


def missing_lines(missing: dict[str, list[str]]) -> list[str]:
    return [f"missing {' and '.join(paths)} (written by `{command}`)" for command, paths in missing.items()]


def sentiment_modes(predictions_dir: Path) -> tuple[list[str], list[str]]:
    """(the modes whose sentiment files are all in `predictions_dir`, the modes with only some of them)."""
    counts = {mode: sum((predictions_dir / graded.name).is_file() for graded in sentiment_files(mode))
              for mode in MODES}
    return ([mode for mode, count in counts.items() if count == len(sentiment_files(mode))],
            [mode for mode, count in counts.items() if 0 < count < len(sentiment_files(mode))])


def sentiment_problem(predictions_dir: Path, complete: list[str], partial: list[str]) -> list[str]:
    """What is wrong with the sentiment files as a whole: no mode complete (`SENTIMENT_RULE`), or none there."""
    if complete:
        return []
    if partial:
        return [f"no fine-tune mode has all its sentiment files in {predictions_dir}: {SENTIMENT_RULE}"]
    return [f"no sentiment predictions in {predictions_dir}: run "
            f"`{command('classifier.py --fine-tune-mode full-model')}` (or --fine-tune-mode last-linear-layer), "
            "which writes {mode}-{sst,cfimdb}-{dev,test}-out.csv"]


def graded_files(predictions_dir: Path, modes: Sequence[str]) -> list[Graded]:
    """The files to check: the sentiment files of each of `modes`, both paraphrase files, the test sonnets,
    and the dev sonnets when they are there."""
    sonnets = [Graded("generated_sonnets.txt", "sonnets_held_out.txt", check_sonnets,
                      command("sonnet_generation.py"))]
    if (predictions_dir / "generated_sonnets_dev.txt").is_file():
        sonnets.append(Graded("generated_sonnets_dev.txt", "sonnets_held_out_dev.txt", check_sonnets,
                              command("sonnet_generation.py")))
    paraphrase = [Graded("para-dev-output.csv", "quora-dev.csv", partial(check_paraphrase, labelled=True),
                         command("paraphrase_detection.py")),
                  Graded("para-test-output.csv", "quora-test-student.csv", partial(check_paraphrase, labelled=False),
                         command("paraphrase_detection.py"))]
    return [graded for mode in modes for graded in sentiment_files(mode)] + paraphrase + sonnets


def sentiment_files(mode: str) -> list[Graded]:
    """The four files that `classifier.py --fine-tune-mode {mode}` writes; the command named for each is the
    one that rewrites its dataset only."""
    return [Graded(f"{mode}-{dataset}-{split}-out.csv", f"ids-{dataset}-{input_split}.csv",
                   partial(check_sentiment, num_labels=num_labels),
                   command(f"classifier.py --fine-tune-mode {mode} --dataset {dataset}"))
            for dataset, num_labels in SENTIMENT_NUM_LABELS.items() for split, input_split in INPUT_SPLITS.items()]


def command(script_and_flags: str) -> str:
    """The command line that runs a task script on this machine: with --use_gpu only where `gpu_flag` says."""
    return f"python {script_and_flags}{gpu_flag()}"


def gpu_flag() -> str:
    """" --use_gpu" where this machine has an NVIDIA driver (nvidia-smi on the PATH: the test by which setup.sh
    installs PyTorch's CUDA build rather than its CPU one), else "": the scripts refuse --use_gpu without a CUDA
    GPU. Asking PyTorch itself would import it, which the hand-in check never does."""
    return " --use_gpu" if shutil.which("nvidia-smi") else ""


def input_file(data_dir: Path, name: str) -> Path:
    """The course's input file `name`; a missing one is a setup step left out, named as such."""
    path = data_dir / name
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `bash setup.sh`, or copy the course's data files into "
                        f"{data_dir}/")
    return path


# -----------------------------------------------------------------------------
# prediction files

def check_sentiment(path: Path, input_path: Path, num_labels: int) -> str:
    """The input is read as unlabelled: a prediction file answers its ids, and grading a dev file's labels is
    not this check's business."""
    ids = [example.id for example in read_sentiment(input_path, num_labels, labelled=False)]
    return check_ids(path, input_path, ids, set(ids), read_predictions(path, [str(k) for k in range(num_labels)]))


def check_paraphrase(path: Path, input_path: Path, labelled: bool) -> str:
    """Answers as the course's token ids of "yes" and "no", or as 1/0, one encoding per file."""
    needed, known = paraphrase_ids(input_path, labelled)
    predictions = paraphrase_labels(path, read_predictions(path, ["0", "1", *PARAPHRASE_ANSWERS]))
    return check_ids(path, input_path, needed, known, predictions)


def paraphrase_ids(input_path: Path, labelled: bool) -> tuple[list[str], set[str]]:
    """(the ids that need a prediction, the ids that may have one). Like the course's training script,
    `read_paraphrase` skips labelled rows whose label is empty: they need no prediction, but one is no error
    (as in `evaluation.grade`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped rows are the course file's, nothing a student can fix
        needed = [example.id for example in read_paraphrase(input_path, labelled)]
    if not labelled:
        return needed, set(needed)
    return needed, {example.id for example in read_paraphrase(input_path, labelled=False)}


def check_ids(path: Path, input_path: Path, needed: list[str], known: Collection[str],
              predictions: dict[str, str]) -> str:
    """Every needed id predicted (`read_predictions` refuses one predicted twice) and no id the input lacks;
    returns how many ids the file answers."""
    missing = [i for i in needed if i not in predictions]
    unknown = [i for i in predictions if i not in known]
    problems = (listed(path, f"no prediction for {len(missing):,} of the {len(needed):,} ids of {input_path}", missing)
                + listed(path, f"predictions for {len(unknown):,} id(s) not in {input_path}", unknown))
    if problems:
        raise UserError("; ".join(problems))
    return f"{len(needed):,} ids"


def listed(path: Path, what: str, items: list[str]) -> list[str]:
    """One problem of the file at `path`, `what` followed by some of the `items` at fault; none without items."""
    return [f"{path}: {what} ({some_of(items)})"] if items else []


# -----------------------------------------------------------------------------
# sonnet files

def check_sonnets(path: Path, prompts_path: Path) -> str:
    """The sonnets of the prompt file, no others, each beginning with its prompt's lines unaltered and going on
    past them. `read_sonnets` strips trailing whitespace, so lines compare as a reader sees them."""
    prompts, generated = read_sonnets(prompts_path), read_sonnets(path)
    missing = [str(number) for number in prompts if number not in generated]
    unknown = [str(number) for number in generated if number not in prompts]
    answered = [number for number in prompts if number in generated]
    altered = [number for number in answered if generated[number][:len(prompts[number])] != prompts[number]]
    unfinished = [str(number) for number in answered
                  if number not in altered and len(generated[number]) <= len(prompts[number])]
    problems = (listed(path, f"missing {len(missing)} of the {len(prompts)} sonnets of {prompts_path}", missing)
                + listed(path, f"{len(unknown)} sonnet(s) without a prompt in {prompts_path}", unknown)
                + listed(path, f"{len(altered)} sonnet(s) not beginning with their prompt's lines unaltered",
                         [str(number) for number in altered])
                + [first_difference(number, prompts[number], generated[number]) for number in altered[:1]]
                + listed(path, f"{len(unfinished)} sonnet(s) with no line after their prompt", unfinished))
    if problems:
        raise UserError("; ".join(problems))
    return f"{len(prompts)} sonnets, each continuing its prompt"


def first_difference(number: int, prompt: list[str], sonnet: list[str]) -> str:
    """Where `sonnet` first departs from its `prompt`, in words."""
    k = next(k for k, line in enumerate(prompt) if k >= len(sonnet) or sonnet[k] != line)
    if k >= len(sonnet):
        return f"sonnet {number} ends after {k} of its prompt's {len(prompt)} lines"
    return f"sonnet {number}'s line {k + 1} reads {sonnet[k]!r} where its prompt has {prompt[k]!r}"
