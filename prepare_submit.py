"""Hand in: check every prediction file against the input file it answers (`course/hand_in.py`), and only
when all of them pass, zip the code and the predictions for the course's submission.

    python prepare_submit.py [--predictions_dir predictions] [--data_dir data]
                             [--out cs224n_default_final_project_submission.zip]

The zip holds every top-level .py file, the code folders (course/, models/, modules/, tools/, training/; without
__pycache__ or .pyc files), and the predictions folder's files as predictions/NAME, where the course's grader
reads them.
"""
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from course.files import atomically
from course.hand_in import check_predictions
from flags import (FlagParser, HelpFormatter, add_flags, from_flags, require, require_separate_paths,
                   require_writable, setting, user_errors_end_in_one_line)

ROOT = Path(__file__).resolve().parent
CODE_FOLDERS = ("course", "models", "modules", "tools", "training")


@dataclass(frozen=True)
class SubmitSettings:
    """What to check, and where the zip goes. Checked at start-up: the zip replaces no input, no file of
    the project and no folder, and goes into a folder that exists."""
    predictions_dir: Path = setting(Path("predictions"), "folder of the prediction files")
    data_dir: Path = setting(Path("data"), "folder of the course's input files")
    out: Path = setting(Path("cs224n_default_final_project_submission.zip"),
                        "the zip to write, replacing an earlier one")

    def __post_init__(self) -> None:
        require_writable(self, "out")
        require(self, "out", self.out.parent.is_dir(), f"the folder {self.out.parent} does not exist")
        require_separate_paths({"--predictions_dir": self.predictions_dir, "--data_dir": self.data_dir},
                               {"--out": self.out})


def submission_files(root: Path, predictions_dir: Path) -> dict[str, Path]:
    """Each file to zip by its name in the zip: the project's code below `root`, and the predictions as
    predictions/NAME whichever folder they were checked in."""
    files = {path.name: path for path in sorted(root.glob("*.py")) if path.is_file()}
    for folder in CODE_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            name = path.relative_to(root)
            if path.is_file() and "__pycache__" not in name.parts and path.suffix != ".pyc":
                files[name.as_posix()] = path
    files.update({f"predictions/{path.name}": path for path in sorted(predictions_dir.iterdir()) if path.is_file()})
    return files


def write_zip(out: Path, files: dict[str, Path]) -> None:
    """`files` zipped into `out` under their names, written `atomically`: an interrupted run leaves the
    previous zip (or none), never part of one."""
    with atomically(out) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in files.items():
            archive.write(path, name)


def build_parser() -> FlagParser:
    parser = FlagParser(prog="prepare_submit.py", formatter_class=HelpFormatter,
                        description="Check the prediction files against the course's input files, then zip them "
                                    "with the code for the course's submission.")
    add_flags(parser, SubmitSettings)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    with user_errors_end_in_one_line("prepare_submit.py"):
        settings = from_flags(SubmitSettings, build_parser().parse_args(argv))
        for line in check_predictions(settings.predictions_dir, settings.data_dir):
            print(line)
        files = submission_files(ROOT, settings.predictions_dir)
        write_zip(settings.out, files)
        print(f"Submission zip file created: {settings.out} ({len(files)} files)")


if __name__ == "__main__":
    main()
