"""Prediction files in the course layout, gold labels from the course CSVs, and classification metrics.

A prediction file is what the course hands in: a header line, then one line per example,

    id \t Predicted_Sentiment
    a7d575c9ed86ea9633660c67e , 3
    33cfa32975091f471e3a19656 , 2

Each data line is written as f"{id} , {label} \\n" (space, comma, space, one trailing space), the
course's layout. Reading is tolerant: a line is split on its first comma
and both parts are stripped, so "id,3" and "id , 3 " read the same.

A sonnet file (generated sonnets, or the gold TRUE_sonnets_*.txt) is a header block, then each sonnet's
number on a line of its own followed by its lines, blank lines between; see `datasets.read_sonnets`.

Command line:

    python evaluation.py grade PREDICTIONS GOLD [--label-column NAME]
    python evaluation.py sonnets GENERATED GOLD
"""
import argparse
import csv
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import pronouncing
from sacrebleu.metrics import CHRF
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

SENTIMENT_HEADER = "id \t Predicted_Sentiment "
PARAPHRASE_HEADER = "id \t Predicted_Is_Paraphrase "
LABEL_COLUMNS = ("sentiment", "is_duplicate")  # the labelled course files carry exactly one of these
EXAMPLES_IN_ERRORS = 5  # how many offending ids an error message lists
SONNET_LINES = 14
# Shakespearean scheme ABAB CDCD EFEF GG as 0-based line pairs
RHYME_PAIRS = ((0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 13))


# -----------------------------------------------------------------------------
# prediction files

def write_predictions(path: str | os.PathLike, ids: Sequence[str], labels: Sequence, header: str) -> None:
    """Write `header`, then one f"{id} , {label} " line per example, replacing `path` atomically."""
    ids, labels = [str(i) for i in ids], [str(label) for label in labels]
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    seen = set()
    for i, label in zip(ids, labels):
        if not i.strip() or "," in i or "\n" in i:
            raise ValueError(f"id {i!r} cannot be written: it must be non-empty, without commas or newlines")
        if not label.strip() or "\n" in label:
            raise ValueError(f"label {label!r} for id {i!r} cannot be written: it must be non-empty, one line")
        if i in seen:
            raise ValueError(f"duplicate id {i!r}")
        seen.add(i)
    if "\n" in header.rstrip("\n"):
        raise ValueError("the header must be a single line")
    lines = [header.rstrip("\n")] + [f"{i} , {label} " for i, label in zip(ids, labels)]
    _write_atomically(Path(path), "".join(line + "\n" for line in lines))


def _write_atomically(path: Path, text: str) -> None:
    # A temporary file in the same directory, so os.replace stays on one filesystem and readers
    # never see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Predicted label by id, in file order. The first line is the header; blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    predictions: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as f:  # text mode turns CRLF into "\n"; utf-8-sig drops a BOM
        for number, line in enumerate(f, start=1):
            if number == 1:
                if not line.strip().lower().startswith("id"):
                    raise ValueError(f"{path}, line 1: expected a header line starting with 'id', got {line.strip()!r}")
                continue
            if not line.strip():
                continue
            if "," not in line:
                raise ValueError(f"{path}, line {number}: no comma between id and label in {line.strip()!r}")
            i, label = (part.strip() for part in line.split(",", 1))
            if not i:
                raise ValueError(f"{path}, line {number}: empty id")
            if not label:
                raise ValueError(f"{path}, line {number}: empty label for id {i!r}")
            if i in predictions:
                raise ValueError(f"{path}, line {number}: duplicate id {i!r}")
            predictions[i] = label
    return predictions


# -----------------------------------------------------------------------------
# gold labels

def normalise_label(label: str) -> str:
    """'1.0' -> '1' (the Quora files store labels as floats); anything not an integral number is kept."""
    label = label.strip()
    try:
        number = float(label)
    except ValueError:
        return label
    return str(int(number)) if number.is_integer() else label


def read_gold_labels(path: str | os.PathLike, label_column: str | None = None) -> dict[str, str]:
    """Normalised gold label by id from a labelled course CSV; rows with an empty label are skipped with a warning."""
    gold, skipped, column = _read_gold(Path(path), label_column)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) with an empty {column!r} label", stacklevel=2)
    return gold


def _read_gold(path: Path, label_column: str | None) -> tuple[dict[str, str], set[str], str]:
    """(label by id, ids of rows with an empty label, the label column used)."""
    if not path.exists():
        raise FileNotFoundError(f"gold file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        try:
            return _read_gold_rows(path, reader, label_column)
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: {error}") from error


def _read_gold_rows(path: Path, reader: csv.DictReader,
                    label_column: str | None) -> tuple[dict[str, str], set[str], str]:
    gold: dict[str, str] = {}
    skipped: set[str] = set()
    columns = reader.fieldnames or []
    column = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        wanted = repr(label_column) if label_column else " or ".join(map(repr, LABEL_COLUMNS))
        raise ValueError(f"{path}, line 1: no {wanted} label column; the columns are {columns}")
    if "id" not in columns:
        raise ValueError(f"{path}, line 1: no 'id' column; the columns are {columns}")
    for row in reader:
        # reader.line_num is the physical line just read, so it stays right past multi-line quoted fields
        i = (row["id"] or "").strip()
        if not i:
            raise ValueError(f"{path}, line {reader.line_num}: empty id")
        if i in gold or i in skipped:
            raise ValueError(f"{path}, line {reader.line_num}: duplicate id {i!r}")
        label = (row[column] or "").strip()
        if label:
            gold[i] = normalise_label(label)
        else:
            skipped.add(i)
    return gold, skipped, column


# -----------------------------------------------------------------------------
# metrics

def _label_order(labels: set[str]) -> list[str]:
    # numeric labels by value ("2" before "10"), then any others alphabetically
    def key(label: str) -> tuple:
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)
    return sorted(labels, key=key)


def classification_metrics(golds: Sequence, preds: Sequence, labels: Sequence | None = None) -> dict:
    """Accuracy, macro-F1, per-class scores and the confusion matrix; labels are compared as strings.

    `labels` fixes the order of classes (default: all labels seen, numerically sorted). The confusion
    matrix has one row per gold class and one column per predicted class. When the classes are exactly
    {0, 1}, `precision`, `recall` and `f1` of the positive class 1 are added.
    """
    golds, preds = [str(g) for g in golds], [str(p) for p in preds]
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    if not golds:
        raise ValueError("no examples to score")
    order = [str(label) for label in labels] if labels is not None else _label_order(set(golds) | set(preds))
    precision, recall, f1, support = precision_recall_fscore_support(
        golds, preds, labels=order, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(golds, preds)),
        "macro_f1": float(f1.mean()),
        "labels": order,
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(order, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(golds, preds, labels=order).tolist(),
    }
    if set(order) == {"0", "1"}:
        positive = metrics["per_class"]["1"]
        metrics |= {"precision": positive["precision"], "recall": positive["recall"], "f1": positive["f1"]}
    return metrics


# -----------------------------------------------------------------------------
# grading

def _some(ids: list[str]) -> str:
    shown = ", ".join(ids[:EXAMPLES_IN_ERRORS])
    return shown + (", ..." if len(ids) > EXAMPLES_IN_ERRORS else "")


def grade(predictions_path: str | os.PathLike, gold_path: str | os.PathLike,
          label_column: str | None = None) -> dict:
    """Metrics of a prediction file against a labelled course CSV, plus `count` (examples scored) and
    `skipped` (gold rows with an empty label: not scored, and not required in the predictions)."""
    gold, skipped, column = _read_gold(Path(gold_path), label_column)
    predictions = read_predictions(predictions_path)
    if not gold:
        raise ValueError(f"{gold_path}: no labelled rows in column {column!r}")
    missing = [i for i in gold if i not in predictions]
    unknown = [i for i in predictions if i not in gold and i not in skipped]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(gold)} gold ids have no prediction ({_some(missing)})")
    if unknown:
        problems.append(f"{len(unknown)} of {len(predictions)} predicted ids are not in the gold file "
                        f"({_some(unknown)})")
    if problems:
        raise ValueError(f"{predictions_path} does not match {gold_path}: " + "; ".join(problems))
    golds = list(gold.values())
    preds = [normalise_label(predictions[i]) for i in gold]  # so a predicted '1.0' matches gold '1' too
    return classification_metrics(golds, preds) | {"count": len(golds), "skipped": len(skipped)}


def format_report(metrics: dict) -> str:
    """The metrics from `grade` or `classification_metrics` as a readable plain-text report."""
    lines = []
    if "count" in metrics:
        lines.append(f"examples   {metrics['count']}" + (f" ({metrics['skipped']} unlabelled gold rows skipped)"
                                                         if metrics.get("skipped") else ""))
    lines += [f"accuracy   {metrics['accuracy']:.4f}", f"macro-F1   {metrics['macro_f1']:.4f}"]
    if "f1" in metrics:
        lines.append(f"class 1    precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}  "
                     f"F1 {metrics['f1']:.4f}")
    labels = metrics["labels"]
    width = max(5, *(len(label) for label in labels))
    lines += ["", f"{'label':<{width}}  precision  recall      f1  support"]
    for label in labels:
        c = metrics["per_class"][label]
        lines.append(f"{label:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    cell = max(width, *(len(str(n)) for row in metrics["confusion_matrix"] for n in row))
    lines += ["", "confusion matrix (rows: gold, columns: predicted)",
              " " * cell + "".join(f"  {label:>{cell}}" for label in labels)]
    for label, row in zip(labels, metrics["confusion_matrix"]):
        lines.append(f"{label:>{cell}}" + "".join(f"  {n:>{cell}}" for n in row))
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# sonnets

def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100) of hypotheses against one reference each: sacrebleu's CHRF with default settings."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no texts to score")
    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams of lowercased whitespace tokens, pooled over texts (n-grams do not
    cross from one text to the next); 0.0 when the texts hold no n-gram."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = []
    for text in texts:
        tokens = text.lower().split()
        grams += [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def fourteen_line_share(sonnets: Sequence[Sequence[str]]) -> float:
    """Share of sonnets with exactly 14 lines."""
    if not sonnets:
        raise ValueError("no sonnets to score")
    return sum(len(lines) == SONNET_LINES for lines in sonnets) / len(sonnets)


def _last_word(line: str) -> str:
    """The line's last word, lowercased, with letters and apostrophes only ("groan;" -> "groan",
    "self-love." -> "love"); "" when the line holds no letter."""
    words = re.findall(r"[a-z']*[a-z][a-z']*", line.lower())
    return words[-1].strip("'") if words else ""


def _spelling_rhyme(word: str) -> str:
    """The spelling from the start of the last vowel group (aeiouy) on: "thee" -> "ee", "groan" -> "oan"."""
    letters = re.sub(r"[^a-z]", "", word)
    match = re.search(r"[aeiouy]+[^aeiouy]*$", letters)
    return match.group() if match else letters


def words_rhyme(first: str, second: str) -> bool:
    """Whether two words rhyme; identical words count as a rhyme.

    Pronunciations come from the CMU Pronouncing Dictionary (through the `pronouncing` package): the
    words rhyme when any pronunciation of one shares its rhyming part (last stressed vowel on) with
    any pronunciation of the other. When either word is not in the dictionary, their spellings are
    compared from the start of the last vowel group (see `_spelling_rhyme`).
    """
    first, second = _last_word(first), _last_word(second)
    if not first or not second:
        return False
    if first == second:
        return True
    phones = [pronouncing.phones_for_word(word) for word in (first, second)]
    if all(phones):
        return bool({pronouncing.rhyming_part(p) for p in phones[0]}
                    & {pronouncing.rhyming_part(p) for p in phones[1]})
    return _spelling_rhyme(first) == _spelling_rhyme(second)


def rhyme_accuracy(sonnets: Sequence[Sequence[str]]) -> float:
    """Share of the Shakespearean rhyme pairs (ABAB CDCD EFEF GG: lines 1-3, 2-4, 5-7, 6-8, 9-11, 10-12,
    13-14) whose last words rhyme (`words_rhyme`), pooled over all sonnets. Only sonnets with at least
    14 lines are scored, on their first 14; 0.0 when there is none."""
    scored = [lines for lines in sonnets if len(lines) >= SONNET_LINES]
    if not scored:
        return 0.0
    hits = sum(words_rhyme(lines[a], lines[b]) for lines in scored for a, b in RHYME_PAIRS)
    return hits / (len(scored) * len(RHYME_PAIRS))


def sonnet_metrics(generated: dict[int, list[str]], gold: dict[int, list[str]]) -> dict:
    """chrF of generated against gold sonnets (texts joined with "\\n", matched by number, over the gold
    numbers), and distinct-1, distinct-2, 14-line share and rhyme accuracy of all generated sonnets,
    plus `count` (generated sonnets). Every gold number must be generated."""
    if not gold:
        raise ValueError("no gold sonnets")
    missing = [str(i) for i in gold if i not in generated]
    if missing:
        raise ValueError(f"{len(missing)} of {len(gold)} gold sonnets were not generated ({_some(missing)})")
    shared = [i for i in gold if i in generated]
    texts = ["\n".join(lines) for lines in generated.values()]
    sonnets = list(generated.values())
    return {
        "chrf": chrf(["\n".join(generated[i]) for i in shared], ["\n".join(gold[i]) for i in shared]),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "fourteen_line_share": fourteen_line_share(sonnets),
        "rhyme_accuracy": rhyme_accuracy(sonnets),
        "count": len(sonnets),
    }


SONNET_HEADER = "--Generated Sonnets--"


def write_sonnets(path: str | os.PathLike, sonnets: dict[int, list[str]]) -> None:
    """The course's generated-sonnets layout: a header, then each sonnet's number on its own line followed
    by its lines, a blank line between sonnets. Written atomically."""
    blocks = [f"\n{number}\n" + "".join(line + "\n" for line in lines) for number, lines in sonnets.items()]
    _write_atomically(Path(path), SONNET_HEADER + "\n" + "".join(blocks))


def grade_sonnets(generated_path: str | os.PathLike, gold_path: str | os.PathLike) -> dict:
    """`sonnet_metrics` of two sonnet files, read with `datasets.read_sonnets`."""
    from datasets import read_sonnets  # here, so `grade` does not pay for importing torch
    return sonnet_metrics(read_sonnets(generated_path), read_sonnets(gold_path))


# -----------------------------------------------------------------------------
# command line

def _grade_command(args: argparse.Namespace) -> None:
    print(format_report(grade(args.predictions, args.gold, args.label_column)))


def _sonnets_command(args: argparse.Namespace) -> None:
    print(json.dumps(grade_sonnets(args.generated, args.gold), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate prediction files of the GPT-2 course tasks.")
    commands = parser.add_subparsers(dest="command", required=True)
    grader = commands.add_parser("grade", help="score a prediction file against a labelled course CSV")
    grader.add_argument("predictions", help="prediction file in the course layout (header, then 'id , label' lines)")
    grader.add_argument("gold", help="labelled course CSV, e.g. data/ids-sst-dev.csv or data/quora-dev.csv")
    grader.add_argument("--label-column",
                        help="gold label column (default: sentiment or is_duplicate, whichever exists)")
    grader.set_defaults(run=_grade_command)
    sonnets = commands.add_parser("sonnets", help="score generated sonnets against gold sonnets")
    sonnets.add_argument("generated", help="sonnet file: header, then each sonnet's number and lines")
    sonnets.add_argument("gold", help="gold sonnet file, e.g. data/TRUE_sonnets_held_out_dev.txt")
    sonnets.set_defaults(run=_sonnets_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # bad input: a one-line message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
