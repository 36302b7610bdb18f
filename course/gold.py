"""The labelled course CSVs as grading reads them: each labelled row's class, in the task's label set (SST
0-4, CFIMDB 0-1, Quora 0/1), whichever classes the file happens to hold. The file rules are `course.files`'."""
from dataclasses import dataclass
from pathlib import Path

from course.files import SENTIMENT_NUM_LABELS, header, parse_label, read_id, read_lines, require_columns, table_rows
from flags import UserError

LABEL_COLUMNS = ("sentiment", "is_duplicate")  # the labelled course files carry exactly one of these


@dataclass(frozen=True)
class Gold:
    """A labelled course CSV, as grading reads it."""
    labels: dict[str, str]  # the class of each labelled row, by id: '0', '1', ... ('1.0' in the file reads '1')
    unlabelled: list[str]  # ids of the rows with an empty label
    column: str  # the label column
    classes: list[str]  # the task's label set, '0' to str(num_labels - 1): every class, found in the file or not


def task_num_labels(path: Path, column: str) -> int | None:
    """How many classes the task of a labelled course file has, by its label column and its name: Quora's
    is_duplicate 2, the sentiment of ids-sst-* 5 and of ids-cfimdb-* 2; None when neither says."""
    if column == "sentiment":
        return next((count for dataset, count in SENTIMENT_NUM_LABELS.items()
                     if path.name.startswith(f"ids-{dataset}-")), None)
    return 2 if column == "is_duplicate" else None


def read_gold(path: str | Path, label_column: str | None = None, num_labels: int | None = None) -> Gold:
    """A labelled course CSV's labels, read by `course.files`' rules. The label column is `label_column`, else
    whichever of sentiment / is_duplicate the header names. The task's label set is 0..num_labels-1, else the
    one `task_num_labels` finds; a file whose task neither says is refused, and so is a label outside the set,
    naming its line. A row with an empty label is not graded."""
    path = Path(path)
    lines = read_lines(path)
    names = header(path, lines, ("id", label_column or " or ".join(LABEL_COLUMNS)))
    column = label_column or next((name for name in LABEL_COLUMNS if name in names), None)
    if column is None:
        raise UserError(f"{path}, line 1: no {' or '.join(map(repr, LABEL_COLUMNS))} label column; the header "
                        f"names {names}")
    require_columns(path, names, ("id", column))
    num_labels = num_labels or task_num_labels(path, column)
    if num_labels is None:
        raise UserError(f"{path}: neither its name nor its label column {column!r} says how many classes the task "
                        "has (a course file is named ids-sst-*, ids-cfimdb-* or has is_duplicate): give the number, "
                        "e.g. evaluation.py grade --num-labels 5 for SST, 2 for CFIMDB")
    gold, unlabelled, first_seen = {}, [], {}
    for row in table_rows(path, lines, names):
        where = f"{path}, line {row.line}"
        example_id = read_id(row, where, first_seen)
        if row.fields[column].strip():
            gold[example_id] = str(parse_label(row.fields[column], num_labels, where))
        else:
            unlabelled.append(example_id)
    if not gold:
        raise UserError(f"{path}: no row has a label in column {column!r}")
    return Gold(gold, unlabelled, column, [str(label) for label in range(num_labels)])
