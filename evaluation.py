"""The grading command: scores prediction files against the course's labelled files, and generated sonnets
against gold ones, as a readable table (or, with --json, as JSON for scripts). The file formats are described
in `course/files.py`, the metrics live in `course/metrics.py`.

    python evaluation.py grade PREDICTIONS GOLD [--label-column NAME] [--num-labels N] [--json]
    python evaluation.py sonnets GENERATED GOLD [--json]
"""
import argparse
import json
import os
from collections.abc import Sequence

from course.files import PARAPHRASE_ANSWERS, normalise_label, paraphrase_labels, read_predictions, some_of
from course.gold import read_gold
from course.metrics import classification_metrics, sonnet_metrics
from course.sonnets import read_sonnets
from flags import FlagParser, UserError, user_errors_end_in_one_line

# -----------------------------------------------------------------------------
# grading

def grade(predictions_path: str | os.PathLike, gold_path: str | os.PathLike, label_column: str | None = None,
          num_labels: int | None = None) -> dict:
    """Metrics of a prediction file against a labelled course CSV, plus `count` (examples scored) and
    `skipped` (gold rows with an empty label: not scored, and not required in the predictions). The label
    set is the task's, 0..num_labels-1 (by default found from the gold file's label column and name, see
    `course.gold.read_gold`), not the labels the gold file happens to hold: a prediction outside it is
    refused, and macro-F1 averages over every class of it, as the training scripts' per-epoch metrics do, so a
    dev file that lacks a class grades a valid prediction of that class. Paraphrase predictions may hold the
    course's token ids of "yes" and "no" instead of 1 and 0."""
    gold = read_gold(gold_path, label_column, num_labels)
    if gold.column == "is_duplicate":
        predictions = paraphrase_labels(predictions_path,
                                        read_predictions(predictions_path, [*gold.classes, *PARAPHRASE_ANSWERS]))
    else:
        predictions = read_predictions(predictions_path, gold.classes)
    missing = [i for i in gold.labels if i not in predictions]
    unknown = [i for i in predictions if i not in gold.labels and i not in gold.unlabelled]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(gold.labels)} gold ids have no prediction ({some_of(missing)})")
    if unknown:
        problems.append(f"{len(unknown)} of {len(predictions)} predicted ids are not in the gold file "
                        f"({some_of(unknown)})")
    if problems:
        raise UserError(f"{predictions_path} does not match {gold_path}: " + "; ".join(problems))
    preds = [normalise_label(predictions[i]) for i in gold.labels]  # so a predicted '1.0' matches gold '1' too
    return classification_metrics(list(gold.labels.values()), preds, gold.classes) | {
        "count": len(gold.labels), "skipped": len(gold.unlabelled)}


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


def grade_sonnets(generated_path: str | os.PathLike, gold_path: str | os.PathLike) -> dict:
    """`sonnet_metrics` of a generated sonnet file against a gold one, which must hold every gold sonnet."""
    generated, gold = read_sonnets(generated_path), read_sonnets(gold_path)
    missing = [str(number) for number in gold if number not in generated]
    if missing:
        raise UserError(f"{generated_path} lacks {len(missing)} of the {len(gold)} sonnets of {gold_path} "
                        f"({some_of(missing)})")
    return sonnet_metrics(generated, gold)


SONNET_ROWS = {"count": "sonnets", "chrf": "chrF", "distinct_1": "distinct-1", "distinct_2": "distinct-2",
               "fourteen_line_share": "14-line share", "rhyme_accuracy": "rhyme accuracy"}


def format_sonnet_report(metrics: dict) -> str:
    """The metrics from `grade_sonnets` as a plain-text table, one metric a line."""
    width = max(map(len, SONNET_ROWS.values()))
    return "\n".join(f"{name:<{width}}  " + (f"{metrics[key]}" if key == "count" else f"{metrics[key]:.4f}")
                     for key, name in SONNET_ROWS.items())


# -----------------------------------------------------------------------------
# command line

def _grade_command(args: argparse.Namespace) -> None:
    if args.num_labels is not None and args.num_labels < 2:
        raise UserError(f"--num-labels {args.num_labels}: must be at least 2")
    metrics = grade(args.predictions, args.gold, args.label_column, args.num_labels)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))


def _sonnets_command(args: argparse.Namespace) -> None:
    metrics = grade_sonnets(args.generated, args.gold)
    print(json.dumps(metrics, indent=2) if args.json else format_sonnet_report(metrics))


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(description="Evaluate prediction files of the GPT-2 course tasks.")
    commands = parser.add_subparsers(dest="command", required=True)
    grader = commands.add_parser("grade", help="score a prediction file against a labelled course CSV")
    grader.add_argument("predictions", help="prediction file in the course layout (header, then 'id , label' lines)")
    grader.add_argument("gold", help="labelled course CSV, e.g. data/ids-sst-dev.csv or data/quora-dev.csv")
    grader.add_argument("--label-column",
                        help="gold label column (default: sentiment or is_duplicate, whichever exists)")
    grader.add_argument("--num-labels", type=int,
                        help="the task's number of classes, labels 0 to N-1 (default: 2 for is_duplicate; for "
                             "sentiment, 5 in an ids-sst-* file and 2 in an ids-cfimdb-* one)")
    grader.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    grader.set_defaults(run=_grade_command)
    sonnets = commands.add_parser("sonnets", help="score generated sonnets against gold sonnets")
    sonnets.add_argument("generated", help="sonnet file: header, then each sonnet's number and lines")
    sonnets.add_argument("gold", help="gold sonnet file, e.g. data/TRUE_sonnets_held_out_dev.txt")
    sonnets.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    sonnets.set_defaults(run=_sonnets_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    with user_errors_end_in_one_line("evaluation.py"):
        args = build_parser().parse_args(argv)
        args.run(args)


if __name__ == "__main__":
    main()
