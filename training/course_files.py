"""The course's files, each read exactly as its format says or refused with its path, line and problem;
and the files we hand in, written atomically.

Course CSVs (`ids-sst-*.csv`, `ids-cfimdb-*.csv`, `quora-*.csv`) are tab-separated with a leading unnamed
index column and a header row naming the others (id, sentence / sentence1, sentence2, and in labelled files
sentiment / is_duplicate).

A prediction file is what the course hands in: a header line, then one line per example,

    id \t Predicted_Sentiment
    a7d575c9ed86ea9633660c67e , 3
    33cfa32975091f471e3a19656 , 2

Each data line is written as f"{id} , {label} \\n" (space, comma, space, one trailing space), the
course's layout. Reading is tolerant: a line is split on its first comma and both parts are stripped,
so "id,3" and "id , 3 " read the same.

A sonnet file (the training sonnets, the held-out prompts, the gold TRUE_sonnets_*.txt, or generated
sonnets) is a header block, then each sonnet's number on a line of its own followed by its lines, blank
lines between (`read_sonnets`).
"""
import csv
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SENTIMENT_NUM_LABELS = {"sst": 5, "cfimdb": 2}
SENTIMENT_HEADER = "id \t Predicted_Sentiment "
PARAPHRASE_HEADER = "id \t Predicted_Is_Paraphrase "
LABEL_COLUMNS = ("sentiment", "is_duplicate")  # the labelled course files carry exactly one of these
EXAMPLES_IN_ERRORS = 5  # how many offending ids an error message lists


def some_of(ids: list[str]) -> str:
    """The first few of `ids`, for an error message."""
    return ", ".join(ids[:EXAMPLES_IN_ERRORS]) + (", ..." if len(ids) > EXAMPLES_IN_ERRORS else "")


# -----------------------------------------------------------------------------
# course CSVs

@dataclass
class SentimentExample:
    id: str
    sentence: str
    label: int | None  # None in the unlabelled test files


def open_course_csv(path: str | Path, required: tuple[str, ...]) -> tuple[csv.DictReader, object]:
    """A `csv.DictReader` over a course file (tab-separated, CRLF or LF), after checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `bash setup.sh` or copy the course data into data/")
    handle = open(path, newline="", encoding="utf-8")
    reader = csv.DictReader(handle, delimiter="\t")
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        handle.close()
        raise ValueError(f"{path}, line 1: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
    return reader, handle


def read_sentiment(path: str | Path, num_labels: int, labelled: bool = True) -> list[SentimentExample]:
    """Rows of an `ids-{sst,cfimdb}-*.csv` file. Extra columns (the test files' unnamed one) are ignored;
    a row without an id or sentence, a repeated id, or a label outside 0..num_labels-1 is an error."""
    required = ("id", "sentence", "sentiment") if labelled else ("id", "sentence")
    reader, handle = open_course_csv(path, required)
    examples, seen = [], set()
    with handle:
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            example_id, sentence = (row["id"] or "").strip(), (row["sentence"] or "").strip()
            if not example_id:
                raise ValueError(f"{where}: the row has no id")
            if example_id in seen:
                raise ValueError(f"{where}: id {example_id} appears twice")
            if not sentence:
                raise ValueError(f"{where}: id {example_id} has an empty sentence")
            label = parse_label(row["sentiment"], num_labels, where) if labelled else None
            seen.add(example_id)
            examples.append(SentimentExample(example_id, sentence, label))
    if not examples:
        raise ValueError(f"{path} has no rows")
    return examples


@dataclass
class ParaphraseExample:
    id: str
    sentence1: str
    sentence2: str
    label: int | None  # 1 duplicate, 0 not; None in the unlabelled test file


def read_paraphrase(path: str | Path, labelled: bool = True) -> list[ParaphraseExample]:
    """Rows of a `quora-*.csv` file. As in the course files, labelled rows whose label is empty or not a
    number are skipped and counted in one warning; a row without an id or a repeated id is an error."""
    required = ("id", "sentence1", "sentence2", "is_duplicate") if labelled else ("id", "sentence1", "sentence2")
    reader, handle = open_course_csv(path, required)
    examples, seen, skipped = [], set(), []
    with handle:
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            example_id = (row["id"] or "").strip()
            if not example_id:
                raise ValueError(f"{where}: the row has no id")
            if example_id in seen:
                raise ValueError(f"{where}: id {example_id} appears twice")
            seen.add(example_id)
            label = None
            if labelled:
                try:
                    label = parse_label(row["is_duplicate"], 2, where)
                except ValueError:
                    skipped.append(reader.line_num)
                    continue
            examples.append(ParaphraseExample(example_id, (row["sentence1"] or "").strip(),
                                              (row["sentence2"] or "").strip(), label))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) without a 0/1 label (lines "
                      f"{', '.join(map(str, skipped[:10]))}{', ...' if len(skipped) > 10 else ''})")
    if not examples:
        raise ValueError(f"{path} has no usable rows")
    return examples


def parse_label(text: str | None, num_labels: int, where: str) -> int:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {text!r} is not a number") from None
    if value != int(value) or not 0 <= value < num_labels:
        raise ValueError(f"{where}: label {text!r} is outside the label set 0..{num_labels - 1}")
    return int(value)


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
    gold, skipped, column = read_gold(Path(path), label_column)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) with an empty {column!r} label", stacklevel=2)
    return gold


def read_gold(path: Path, label_column: str | None) -> tuple[dict[str, str], set[str], str]:
    """(label by id, ids of rows with an empty label, the label column used)."""
    if not path.exists():
        raise FileNotFoundError(f"gold file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        try:
            return read_gold_rows(path, reader, label_column)
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: {error}") from error


def read_gold_rows(path: Path, reader: csv.DictReader,
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
# sonnet files

SONNET_HEADER = "--Generated Sonnets--"


def read_sonnets(path: str | Path) -> dict[int, list[str]]:
    """Sonnets of a course file: a header, then each sonnet's number on a line of its own followed by its
    lines (blank lines ignored, CRLF or LF). Sonnets of any length are kept (the course's 99 has 15 lines,
    126 has 12); a number with no lines or a repeated number is an error naming the sonnet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `bash setup.sh` or copy the course data into data/")
    sonnets: dict[int, list[str]] = {}
    current = None
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, line in enumerate(f.read().splitlines(), start=1):
            if line.strip().isdigit():
                current = int(line)
                if current in sonnets:
                    raise ValueError(f"{path}, line {line_number}: sonnet {current} appears twice")
                sonnets[current] = []
            elif line.strip() and current is not None:
                sonnets[current].append(line.rstrip())
    empty = [number for number, lines in sonnets.items() if not lines]
    if empty:
        raise ValueError(f"{path}: sonnet {empty[0]} has a number but no lines")
    if not sonnets:
        raise ValueError(f"{path} holds no numbered sonnets")
    return sonnets


def write_sonnets(path: str | os.PathLike, sonnets: dict[int, list[str]]) -> None:
    """The course's generated-sonnets layout: a header, then each sonnet's number on its own line followed
    by its lines, a blank line between sonnets. Written atomically."""
    blocks = [f"\n{number}\n" + "".join(line + "\n" for line in lines) for number, lines in sonnets.items()]
    write_atomically(Path(path), SONNET_HEADER + "\n" + "".join(blocks))


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
    write_atomically(Path(path), "".join(line + "\n" for line in lines))


def write_atomically(path: Path, text: str) -> None:
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
