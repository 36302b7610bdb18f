"""The course's sonnet files: the training sonnets, the held-out prompts, the gold TRUE_sonnets_*.txt and
generated sonnets. Each is a header block, then each sonnet's number on a line of its own followed by its
lines, blank lines between; `read_sonnets` gives the rules."""
import os
import re
import warnings
from pathlib import Path

from course.files import read_lines, write_atomically
from flags import UserError


SONNET_HEADER = "--Generated Sonnets--"
SONNET_NUMBER = re.compile(r"[0-9]+")


def read_sonnets(path: str | Path, prompt_lines: int | None = None) -> dict[int, list[str]]:
    """The sonnets of a course sonnet file by number, exactly, or a `UserError` naming the line.

    The file (encoding and line ends as `read_lines` accepts) is a header block, then each sonnet's number
    on a line of its own followed by its lines; blank lines are ignored, and a sonnet line keeps its
    indentation. Numbers count up by one from the first: a repeated, missing or misplaced number, a number
    with no lines, or text after the header's blank lines but before the first number (a first sonnet
    without its number) is refused. Sonnets of any length are kept (the course's 99 has 15 lines, 126 has
    12); with `prompt_lines` (the held-out prompts), a sonnet of another length is warned about by name.
    """
    path = Path(path)
    sonnets: dict[int, list[str]] = {}
    number_line: dict[int, int] = {}
    header, current = "none", None  # header: "none" yet, "text", or "done" at the blank line after its text
    for line_number, line in enumerate(read_lines(path), start=1):
        text, where = line.strip(), f"{path}, line {line_number}"
        if SONNET_NUMBER.fullmatch(text):
            number = int(text)
            if number in sonnets:
                raise UserError(f"{where}: sonnet {number} appears twice (first on line {number_line[number]})")
            if current is not None and number != current + 1:
                raise UserError(f"{where}: sonnet {number} follows sonnet {current} (line {number_line[current]}); "
                                f"the numbers count up by one, so is sonnet {current + 1}'s number line missing?")
            current, sonnets[number], number_line[number] = number, [], line_number
        elif current is not None:
            if text:
                sonnets[current].append(line.rstrip())
        elif not text:
            header = "done" if header == "text" else header
        elif header == "done":
            raise UserError(f"{where}: text after the header's blank line but before the first sonnet number; is "
                            "the first sonnet's number line missing?")
        else:
            header = "text"
    if not sonnets:
        raise UserError(f"{path} holds no numbered sonnets")
    for number, lines in sonnets.items():
        if not lines:
            raise UserError(f"{path}, line {number_line[number]}: sonnet {number} has a number but no lines")
        if prompt_lines is not None and len(lines) != prompt_lines:
            hint = f" (is sonnet {number + 1}'s number line missing?)" if len(lines) > prompt_lines else ""
            warnings.warn(f"{path}, line {number_line[number]}: prompt {number} has {len(lines)} lines, where a "
                          f"held-out prompt has {prompt_lines}{hint}", stacklevel=2)
    return sonnets


def write_sonnets(path: str | os.PathLike, sonnets: dict[int, list[str]]) -> None:
    """The course's generated-sonnets layout: a header, then each sonnet's number on its own line followed
    by its lines, a blank line between sonnets. Written atomically."""
    blocks = [f"\n{number}\n" + "".join(line + "\n" for line in lines) for number, lines in sonnets.items()]
    write_atomically(Path(path), SONNET_HEADER + "\n" + "".join(blocks))
