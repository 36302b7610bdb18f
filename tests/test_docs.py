"""The documents tell the truth: the README stays a ten-minute read and leads to every page in docs/, every
command they show parses with its script's own parser, every flag they name exists, and every project file,
folder, link and Python name they mention is there. Nothing here runs a script: commands are only parsed."""
import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

import prepare_submit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 12_000  # bytes: a ten-minute read

# The project's commands, by file name. Each has `build_parser()` except benchmark.py, whose `parse_args()`
# builds its parser and reads sys.argv.
SCRIPTS = ("classifier.py", "paraphrase_detection.py", "sonnet_generation.py", "evaluation.py",
           "prepare_submit.py", "experiments.py", "benchmark.py", "predict.py", "export.py")
PYTHONS = re.compile(r"(.*/)?python(3(\.\d+)?)?")
TORCHRUN = re.compile(r"(.*/)?torchrun")
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
# Flags of other programs the documents show: torchrun's and the Hugging Face CLI's.
OTHER_PROGRAMS_FLAGS = {"--standalone", "--nproc_per_node", "--local-dir"}
# Folders that runs create, so a fresh clone need not hold them.
RUN_OUTPUTS = ("runs", "sweeps", "checkpoints")
FILE_ENDINGS = {"py", "md", "json", "jsonl", "pt", "csv", "txt", "png", "db", "toml", "safetensors", "bin",
                "zip", "log"}


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class Line:
    document: Path
    number: int
    text: str
    block: str | None  # the fenced block's language ("" when none is given); None outside blocks

    def __str__(self) -> str:
        return f"{shown(self.document)}:{self.number}: {self.text.strip()}"


def lines_of(document: Path) -> list[Line]:
    """Every line of a Markdown document, with the fenced code block it sits in."""
    found, block = [], None
    for number, text in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", text)
        if fence:
            block = fence.group(1) if block is None else None
            continue
        found.append(Line(document, number, text, block))
    return found


def prose(document: Path) -> list[Line]:
    return [line for line in lines_of(document) if line.block is None]


def code_spans(line: Line) -> list[str]:
    return re.findall(r"`([^`]+)`", line.text)


# -----------------------------------------------------------------------------
# commands


@dataclass
class Command:
    where: Line
    script: str
    args: list[str]


def command_words(text: str) -> list[str] | None:
    """The script and its arguments, if the shell text runs one of the project's scripts through python or
    torchrun (after any VAR=value assignments); None otherwise."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words = words[1:]
    if not words or not (PYTHONS.fullmatch(words[0]) or TORCHRUN.fullmatch(words[0])):
        return None
    rest = words[1:]
    if PYTHONS.fullmatch(words[0]):
        if not rest or rest[0].startswith("-"):  # python -m pytest, python -c ...
            return None
        return rest
    script = next((i for i, word in enumerate(rest) if word.endswith(".py")), None)  # after torchrun's options
    return None if script is None else rest[script:]


def commands_in(document: Path) -> list[Command]:
    """Every command line in a shell block (continuation lines joined, `&&` and `;` separating commands),
    and every code span in the prose that starts with python or torchrun."""
    found, pending = [], None  # pending: a command line continued with a backslash
    for line in lines_of(document):
        if line.block in SHELL_BLOCKS:
            text = (pending.text + " " if pending else "") + line.text.strip()
            where = Line(document, (pending or line).number, text, line.block)
            if where.text.endswith("\\"):
                pending = Line(document, where.number, where.text[:-1].strip(), line.block)
                continue
            texts, pending = re.split(r"&&|;|\|\|", where.text), None
        elif line.block is None:
            texts, where = code_spans(line), line
        else:
            continue
        for text in texts:
            words = command_words(text)
            if words:
                found.append(Command(where, words[0], words[1:]))
    return found


def all_commands() -> list[Command]:
    return [command for document in documents() for command in commands_in(document)]


def parse(script: str, args: list[str]) -> str | None:
    """Parses `args` with the script's own parser: None when they parse, else what the parser said."""
    module = importlib.import_module(Path(script).stem)
    said = io.StringIO()
    try:  # sys.argv: the parser's name for itself, and what benchmark.py's parse_args() reads
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()), \
                mock.patch.object(sys, "argv", [script, *args]):
            if hasattr(module, "build_parser"):
                module.build_parser().parse_args(args)
            else:
                module.parse_args()
    except SystemExit as stop:
        if stop.code not in (0, None):  # 0: --help
            return (said.getvalue().strip().splitlines() or [f"exit status {stop.code}"])[-1]
    return None


@pytest.mark.parametrize("command", all_commands(), ids=lambda command: f"{command.where.document.name}:"
                                                                         f"{command.where.number}")
def test_every_command_shown_parses_with_its_scripts_parser(command: Command) -> None:
    assert command.script in SCRIPTS, (
        f"{command.where}\n  runs {command.script}, which is not one of the project's commands {SCRIPTS}")
    refusal = parse(command.script, command.args)
    assert refusal is None, f"{command.where}\n  {command.script}'s parser refuses it: {refusal}"


def test_the_documents_show_every_command() -> None:
    """Guards the extraction above: if it stopped finding commands, every command test would pass vacuously."""
    unshown = set(SCRIPTS) - {command.script for command in all_commands()}
    assert not unshown, f"no command line in the documents runs {sorted(unshown)}"


# -----------------------------------------------------------------------------
# flags named in the prose


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                options |= options_of(command)
    return options


def all_flags() -> set[str]:
    """Every flag of every project command; benchmark.py's from its --help, its parser being built inside."""
    flags = set(OTHER_PROGRAMS_FLAGS)
    for script in SCRIPTS:
        module = importlib.import_module(Path(script).stem)
        if hasattr(module, "build_parser"):
            flags |= options_of(module.build_parser())
        else:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed), mock.patch.object(sys, "argv", [script, "--help"]), \
                    pytest.raises(SystemExit):
                module.parse_args()
            flags |= set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", printed.getvalue()))
    return flags


def test_every_flag_the_prose_names_exists() -> None:
    flags = all_flags()
    wrong = [f"{line}\n  {flag}: no command of the project has it"
             for document in documents() for line in prose(document) for span in code_spans(line)
             for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", span) if flag not in flags]
    assert not wrong, "\n".join(wrong)


# -----------------------------------------------------------------------------
# the README and its pages


def test_readme_is_a_ten_minute_read() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, more than {README_LIMIT}: move detail into docs/"


def test_readme_links_every_page_of_docs_and_only_pages_that_exist() -> None:
    linked = {}
    for line in lines_of(README):
        for target in re.findall(r"\]\((docs/[^)#\s]*)", line.text):
            linked.setdefault(target, line)
    wrong = [f"{line}\n  {target}: no such file" for target, line in linked.items() if not (ROOT / target).is_file()]
    wrong += [f"{shown(page)}: not linked from README.md" for page in sorted(DOCS.glob("*.md"))
              if shown(page) not in linked]
    assert DOCS.is_dir() and any(DOCS.glob("*.md")), "docs/ holds no page"
    assert not wrong, "\n".join(wrong)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces made hyphens."""
    text = re.sub(r"[`*_]|\[([^]]*)]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(document: Path) -> set[str]:
    return {anchor(line.text.lstrip("#")) for line in prose(document) if re.match(r"#{1,6} ", line.text)}


def test_every_link_between_the_documents_leads_somewhere() -> None:
    wrong = []
    for document in documents():
        for line in prose(document):
            for target in re.findall(r"\]\(([^)\s]+)\)", line.text):
                if re.match(r"\w+:", target):  # https:, mailto:
                    continue
                path, _, section = target.partition("#")
                file = (document.parent / path).resolve() if path else document
                if not file.exists():
                    wrong.append(f"{line}\n  {target}: no such file")
                elif section and file.suffix == ".md" and section not in anchors_of(file):
                    wrong.append(f"{line}\n  {target}: {shown(file)} has no section #{section}")
    assert not wrong, "\n".join(wrong)


# -----------------------------------------------------------------------------
# project files, folders and Python names


def missing_path(span: str) -> str | None:
    """What is wrong with a code span that names a project file or folder; None if it names none, or one
    that exists."""
    if not re.fullmatch(r"[\w./-]+", span) or span.startswith(("/", "~", "../")):  # outside the project
        return None
    if re.fullmatch(r"[\w./-]*\w\.py|docs/.*\.md|README\.md", span):
        return None if (ROOT / span).is_file() else "no such file"
    if span.endswith("/") and span.split("/")[0] not in RUN_OUTPUTS:
        return None if (ROOT / span).is_dir() else "no such folder"
    return None


def test_every_project_path_the_documents_name_exists() -> None:
    wrong = [f"{line}\n  {span}: {problem}" for document in documents() for line in prose(document)
             for span in code_spans(line) if (problem := missing_path(span))]
    assert not wrong, "\n".join(wrong)


def missing_name(module_name: str, names: list[str]) -> str | None:
    """What is wrong with `from module_name import names`; None if every name is there."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return f"cannot import {module_name}: {error}"
    absent = [name for name in names if not hasattr(module, name)]
    return f"{module_name} has no {', '.join(absent)}" if absent else None


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a name below a module that is not a package
        return False


def dotted_name(span: str) -> tuple[str, list[str]] | None:
    """(module, [attribute]) for a span like `models.decoding.generate(...)` or `course.files` naming something
    in a project package or module; None for anything else (file names such as config.json included)."""
    found = re.match(r"([a-z_]+(?:\.[A-Za-z_]\w*)+)(\(|$)", span)
    if not found:
        return None
    parts = found.group(1).split(".")
    if parts[-1] in FILE_ENDINGS or not ((ROOT / parts[0]).is_dir() or (ROOT / f"{parts[0]}.py").is_file()):
        return None
    split = next((split for split in range(len(parts), 1, -1) if is_module(".".join(parts[:split]))), 1)
    return ".".join(parts[:split]), parts[split:split + 1]


def test_every_python_name_the_documents_use_exists() -> None:
    """Imports in Python blocks and prose, and dotted names such as `models.decoding.generate(...)`."""
    wrong = []
    for document in documents():
        for line in lines_of(document):
            if line.block != "python":
                continue
            try:
                tree = ast.parse(line.text.strip())
            except SyntaxError:  # a line of a longer statement
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (problem := missing_name(
                        node.module, [alias.name for alias in node.names])):
                    wrong.append(f"{line}\n  {problem}")
        for line in prose(document):
            for span in code_spans(line):
                imported = re.fullmatch(r"from ([\w.]+) import ([\w, ]+)", span)
                named = (imported.group(1), [n.strip() for n in imported.group(2).split(",")]) if imported \
                    else dotted_name(span)
                if named and (problem := missing_name(*named)):
                    wrong.append(f"{line}\n  {problem}")
    assert not wrong, "\n".join(wrong)


def test_the_readme_names_the_folders_the_hand_in_zip_holds() -> None:
    paragraph = next(text for text in README.read_text(encoding="utf-8").split("\n\n") if "the zip holds" in text)
    named = set(re.findall(r"`([^`]+/)`", paragraph.split("the zip holds", 1)[1]))
    zipped = {f"{folder}/" for folder in prepare_submit.CODE_FOLDERS} | {"predictions/"}
    assert named == zipped, (f"README.md says the hand-in zip holds {sorted(named)}; "
                             f"prepare_submit.py zips {sorted(zipped)}")
