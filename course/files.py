"""The course's files, each read exactly as its format says or refused with its path, line and problem;
and the files we hand in, written atomically.

Every reader takes UTF-8 with or without a byte-order mark, and LF or CRLF line ends (`lines_from_bytes`); a
byte-order mark anywhere but the very start (two files joined with `cat`) is refused with its line.

Course CSVs (`ids-sst-*.csv`, `ids-cfimdb-*.csv`, `quora-*.csv`) are tab-separated with a leading unnamed
index column and a header row naming the others (id, sentence / sentence1, sentence2, and in labelled files
sentiment / is_duplicate); `read_table` gives the rules every one of them is read by.

A prediction file is what the course hands in: a header line, then one line per example,

    id \t Predicted_Sentiment
    a7d575c9ed86ea9633660c67e , 3
    33cfa32975091f471e3a19656 , 2

Each data line is written as f"{id} , {label} \\n" (space, comma, space, one trailing space), the
course's layout. Reading is tolerant: a line is split on its first comma and both parts are stripped,
so "id,3" and "id , 3 " read the same. Paraphrase answers are written as the course's pipeline writes
them, the token ids of "yes" (8505, a paraphrase) and "no" (3919); `paraphrase_labels` reads them, or 1/0.

The sonnet files are read and written by `course.sonnets`; gold labels, for grading, by `course.gold`.
"""
import codecs
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from config import NO_ID, YES_ID
from flags import UserError, errors_name

SENTIMENT_NUM_LABELS = {"sst": 5, "cfimdb": 2}
SENTIMENT_HEADER = "id \t Predicted_Sentiment "
PARAPHRASE_HEADER = "id \t Predicted_Is_Paraphrase "
PARAPHRASE_ANSWERS = {str(NO_ID): "0", str(YES_ID): "1"}  # the course's encoding of the 0/1 gold labels
EXAMPLES_IN_ERRORS = 5  # how many offending ids an error message lists
BOM = "\ufeff"  # the byte-order mark, as text


def some_of(ids: list[str]) -> str:
    """The first few of `ids`, for an error message."""
    return ", ".join(ids[:EXAMPLES_IN_ERRORS]) + (", ..." if len(ids) > EXAMPLES_IN_ERRORS else "")


# -----------------------------------------------------------------------------
# text files

def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file, without their line ends, read by `lines_from_bytes`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a directory, not a file" if path.is_dir() else f"{path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path} cannot be read: {error.strerror}") from None
    return lines_from_bytes(data, str(path))


def lines_from_bytes(data: bytes, source: str) -> list[str]:
    """The lines of a text, without their line ends: UTF-8 with or without a byte-order mark, LF or CRLF line
    ends. Other bytes, a carriage return inside a line, or a byte-order mark anywhere but the very start (where
    two files were joined) are refused naming `source` (a path, or e.g. "standard input") and the line."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = data.count(b"\n", 0, error.start) + 1, error.start - data.rfind(b"\n", 0, error.start)
        raise UserError(f"{source}, line {line}: byte 0x{data[error.start]:02x} (column {column}) is not UTF-8; "
                        "save the file as UTF-8") from None
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []
    for number, line in enumerate(lines, start=1):
        if "\r" in line:
            raise UserError(f"{source}, line {number}: a carriage return inside the line; lines end with LF or CRLF")
        if BOM in line:
            raise UserError(f"{source}, line {number}: a byte-order mark inside the file: two files joined? It may "
                            "only start a file: remove it, or join the files without it")
    return lines


# -----------------------------------------------------------------------------
# course CSVs

@dataclass(frozen=True)
class Row:
    """One data line of a course CSV: its line number and its fields by column name."""
    line: int
    fields: dict[str, str]


def read_table(path: str | Path, required: Sequence[str]) -> list[Row]:
    """The rows of a course CSV, exactly, or a `UserError` naming the file, the line and the problem.

    - Encoding: UTF-8, with or without a byte-order mark; CRLF and LF line ends.
    - Line 1 is the header: tab-separated column names (spaces around a name are ignored). It must name
      every column in `required`, each once; other columns (the test files' unnamed index) are kept unused.
    - Every other line is one row, and every row is one line. Blank lines (nothing, or only spaces) are
      skipped; a file with no rows is refused.
    - Fields are separated by tabs, and a row has exactly as many fields as the header: a tab inside an
      unquoted field splits it, and the row is refused for its extra field.
    - Quotes follow CSV: a field that starts with `"` is quoted, ends at the next lone `"` (which a tab or
      the end of the line must follow), and holds `""` for each quote inside it, and tabs as they are. A
      quoted field that does not close on its own line is refused at that line; it never runs on into the
      rows after it. A `"` inside an unquoted field is an ordinary character.
    """
    path = Path(path)
    lines = read_lines(path)
    columns = header(path, lines, required)
    require_columns(path, columns, required)
    return table_rows(path, lines, columns)


def header(path: Path, lines: list[str], named: Sequence[str]) -> list[str]:
    """The column names on line 1; `named` are the columns an empty file is told to name."""
    if not any(line.strip(" ") for line in lines):
        raise UserError(f"{path} is empty: a course CSV starts with a header line naming its columns "
                        f"({', '.join(named)})")
    if not lines[0].strip(" "):
        raise UserError(f"{path}, line 1: blank; the first line is the header naming the columns")
    return [name.strip(" ") for name in split_fields(lines[0], f"{path}, line 1")]


def require_columns(path: Path, columns: list[str], required: Sequence[str]) -> None:
    for name in required:
        if columns.count(name) != 1:
            problem = "is missing" if name not in columns else "appears twice"
            raise UserError(f"{path}, line 1: column {name!r} {problem}; the header names {columns}")


def table_rows(path: Path, lines: list[str], columns: list[str]) -> list[Row]:
    """Every line after the header as a row of `columns` (see `read_table`)."""
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip(" "):
            continue
        where = f"{path}, line {number}"
        values = split_fields(line, where)
        if len(values) != len(columns):
            hint = ("a tab inside a field must be within a quoted field" if len(values) > len(columns)
                    else "is the row cut short?")
            raise UserError(f"{where}: {len(values)} tab-separated fields where the header names {len(columns)}; "
                            + hint)
        rows.append(Row(number, dict(zip(columns, values))))
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    return rows


def split_fields(line: str, where: str) -> list[str]:
    """The tab-separated fields of one line, with CSV quoting (see `read_table`)."""
    fields, start = [], 0
    while True:
        if line.startswith('"', start):
            parts, cursor = [], start + 1
            while True:
                close = line.find('"', cursor)
                if close < 0:
                    raise UserError(f"{where}: the quoted field that opens at column {start + 1} does not close on "
                                    "this line; a row sits on one line, and a field that starts with a quote is "
                                    'quoted whole, with each quote inside it doubled ("")')
                parts.append(line[cursor:close])
                if not line.startswith('"', close + 1):
                    break
                parts.append('"')
                cursor = close + 2
            fields.append("".join(parts))
            end = close + 1
            if end < len(line) and line[end] != "\t":
                raise UserError(f"{where}: text after the closing quote of field {len(fields)} (column {end + 1}); "
                                'a quote inside a quoted field is written twice ("")')
        else:
            end = line.find("\t", start)
            end = len(line) if end < 0 else end
            fields.append(line[start:end])
        if end == len(line):
            return fields
        start = end + 1


@dataclass
class SentimentExample:
    id: str
    sentence: str
    label: int | None  # None in the unlabelled test files


def read_sentiment(path: str | Path, num_labels: int, labelled: bool = True) -> list[SentimentExample]:
    """Rows of an `ids-{sst,cfimdb}-*.csv` file, every one: a row without an id or sentence, a repeated id,
    or a label outside 0..num_labels-1 is an error naming its line."""
    rows = read_table(path, ("id", "sentence", "sentiment") if labelled else ("id", "sentence"))
    examples, first_seen = [], {}
    for row in rows:
        where = f"{path}, line {row.line}"
        example_id, sentence = read_id(row, where, first_seen), row.fields["sentence"].strip()
        if not sentence:
            raise UserError(f"{where}: id {example_id} has an empty sentence")
        label = parse_label(row.fields["sentiment"], num_labels, where) if labelled else None
        examples.append(SentimentExample(example_id, sentence, label))
    return examples


@dataclass
class ParaphraseExample:
    id: str
    sentence1: str
    sentence2: str
    label: int | None  # 1 duplicate, 0 not; None in the unlabelled test file


def read_paraphrase(path: str | Path, labelled: bool = True) -> list[ParaphraseExample]:
    """Rows of a `quora-*.csv` file, every one. As the course does, labelled rows whose label is empty are
    skipped, and counted with their lines in one warning; any other label but 0 or 1 is an error."""
    rows = read_table(path, ("id", "sentence1", "sentence2", "is_duplicate") if labelled
                      else ("id", "sentence1", "sentence2"))
    examples, first_seen, unlabelled = [], {}, []
    for row in rows:
        where = f"{path}, line {row.line}"
        example_id = read_id(row, where, first_seen)
        if labelled and not row.fields["is_duplicate"].strip():
            unlabelled.append(row.line)
            continue
        label = parse_label(row.fields["is_duplicate"], 2, where) if labelled else None
        examples.append(ParaphraseExample(example_id, row.fields["sentence1"].strip(),
                                          row.fields["sentence2"].strip(), label))
    if unlabelled:
        warnings.warn(f"{path}: skipped {len(unlabelled)} row(s) with an empty label (line "
                      f"{some_of(list(map(str, unlabelled)))})", stacklevel=2)
    if not examples:
        raise UserError(f"{path} has no labelled rows")
    return examples


def read_extra_rows(extra_files: Sequence[Path], read: Callable[[Path], list[Any]], training: tuple[Path, list[Any]],
                    held_out: dict[str, list[Any]]) -> list[Any]:
    """Every row of each of `extra_files` (`--extra_train`), read by `read` with the course files' rules and
    errors; how many rows each file adds is printed. A row whose id is also an id of a held-out file
    (`held_out`: its examples, by how a message names the file) is refused: training on it would leak that
    example's answer. So is a file given twice, and a row whose id is a row's of the training file
    (`training`: its path and every example, before any sample) or of an earlier extra file, naming both lines:
    it would be trained on twice."""
    first_given: dict[Path, Path] = {}
    for path in extra_files:
        if path.resolve() in first_given:
            raise UserError(f"--extra_train {path}: the same file as --extra_train {first_given[path.resolve()]}; "
                            "its rows would be trained on twice")
        first_given[path.resolve()] = path
    held_out_ids = {name: {example.id for example in rows} for name, rows in held_out.items()}
    training_file, training_rows = training
    trained = dict.fromkeys((example.id for example in training_rows), training_file)  # id -> the file it is from
    added = []
    for path in extra_files:
        rows = read(path)
        for name, ids in held_out_ids.items():
            leaked = [example.id for example in rows if example.id in ids]
            if leaked:
                raise UserError(f"--extra_train {path}: {len(leaked)} id(s) are also in {name} ({some_of(leaked)}): "
                                "training on them would leak their answers")
        repeated = next((example.id for example in rows if example.id in trained), None)
        if repeated is not None:
            first = trained[repeated]
            raise UserError(f"--extra_train {path}, line {line_of(path, repeated)}: id {repeated} is also the row of "
                            f"{first}, line {line_of(first, repeated)}: it would be trained on twice")
        trained |= dict.fromkeys((example.id for example in rows), path)
        print(f"--extra_train {path}: {len(rows):,} rows added to the training rows")
        added += rows
    return added


def line_of(path: Path, example_id: str) -> int:
    """The line of the row of `example_id` in a course CSV that has been read (for an error message)."""
    return next(row.line for row in read_table(path, ("id",)) if row.fields["id"].strip() == example_id)


def read_id(row: Row, where: str, first_seen: dict[str, int]) -> str:
    """The row's id: present, without a comma (a prediction file's "id , label" line could not hold it), and
    not on an earlier line (`first_seen`, updated here)."""
    example_id = row.fields["id"].strip()
    if not example_id:
        raise UserError(f"{where}: the row has no id")
    if "," in example_id:
        raise UserError(f"{where}: id {example_id!r} holds a comma, which a prediction file's 'id , label' lines "
                        "cannot hold")
    if example_id in first_seen:
        raise UserError(f"{where}: id {example_id} appears twice (first on line {first_seen[example_id]})")
    first_seen[example_id] = row.line
    return example_id


def parse_label(text: str, num_labels: int, where: str) -> int:
    """A class index written as an integer or an integral float ('1.0', as in the Quora files)."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: label {text.strip()!r} is not a number") from None
    if not (math.isfinite(value) and value.is_integer() and 0 <= value < num_labels):
        raise UserError(f"{where}: label {text.strip()!r} is outside the label set 0..{num_labels - 1}")
    return int(value)


# -----------------------------------------------------------------------------
# labels as written in gold and prediction files

def normalise_label(label: str) -> str:
    """'1.0' -> '1' (the Quora files store labels as floats); anything not an integral number is kept."""
    label = label.strip()
    try:
        number = float(label)
    except ValueError:
        return label
    return str(int(number)) if number.is_integer() else label


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


@contextmanager
def atomically(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block ends, readable by all (0644 under the usual umask):
    written beside it and renamed, on one filesystem, so readers never see it half-written, and a failure
    leaves `path` as it was."""
    with errors_name(path):  # a failure names the file being written, not the temporary one
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes files private; a hand-in file is not
            with open(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def write_atomically(path: Path, text: str) -> None:
    """`text` as UTF-8 with LF line ends at `path`, written `atomically`."""
    with atomically(path) as f:
        f.write(text.encode("utf-8"))


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask


def read_predictions(path: str | os.PathLike, labels: Collection[str] | None = None) -> dict[str, str]:
    """Predicted label by id, in file order. The first line is the header; blank lines are skipped. With
    `labels`, a prediction outside them (after `normalise_label`) is refused naming its id and line."""
    path = Path(path)
    lines = read_lines(path)
    if not lines or not lines[0].strip().lower().startswith("id"):
        raise UserError(f"{path}, line 1: expected a header line starting with 'id', got "
                        f"{(lines[0].strip() if lines else '')!r}")
    predictions: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        where = f"{path}, line {number}"
        if not line.strip():
            continue
        if "," not in line:
            raise UserError(f"{where}: no comma between id and label in {line.strip()!r}")
        i, label = (part.strip() for part in line.split(",", 1))
        if not i:
            raise UserError(f"{where}: empty id")
        if not label:
            raise UserError(f"{where}: empty label for id {i!r}")
        if i in predictions:
            raise UserError(f"{where}: duplicate id {i!r}")
        if labels is not None and normalise_label(label) not in labels:
            raise UserError(f"{where}: id {i} is predicted {label!r}, which is not one of the labels "
                            f"({', '.join(labels)})")
        predictions[i] = label
    return predictions


def paraphrase_labels(path: str | os.PathLike, predictions: dict[str, str]) -> dict[str, str]:
    """The 0/1 labels of paraphrase predictions written as the course writes them (the token ids of "yes" and
    "no") or as 0/1, either also as a float ('8505.0', '1.0'). A file uses one encoding: one that mixes them is
    refused, naming an id of each."""
    numbers = {i: normalise_label(label) for i, label in predictions.items()}  # '8505.0' is 8505, as '1.0' is 1
    encoded = {i: label in PARAPHRASE_ANSWERS for i, label in numbers.items()}
    if len(set(encoded.values())) > 1:
        token_id = next(i for i, is_token in encoded.items() if is_token)
        plain = next(i for i, is_token in encoded.items() if not is_token)
        raise UserError(f"{path}: id {token_id} is predicted {predictions[token_id]} (a token id, the course's "
                        f"encoding) but id {plain} is predicted {predictions[plain]} (0/1): a file uses one encoding")
    return {i: PARAPHRASE_ANSWERS.get(label, label) for i, label in numbers.items()}
