"""Hand in: check every prediction file against the input file it answers (`course/hand_in.py`), and only
when all of them pass, zip the code and the predictions for the course's submission.

    python prepare_submit.py [--predictions_dir predictions] [--data_dir data]
                             [--out cs224n_default_final_project_submission.zip]

The zip holds every top-level .py file, the code folders (course/, models/, modules/, tools/, training/; without
__pycache__ or .pyc files), and the predictions folder's files as predictions/NAME, where the course's grader
reads them.
"""
import argparse
import zipfile
from collections.abc import Sequence
from pathlib import Path

from course.files import atomically
from course.hand_in import check_predictions
from flags import FlagParser, UserError, user_errors_end_in_one_line

ROOT = Path(__file__).resolve().parent
CODE_FOLDERS = ("course", "models", "modules", "tools", "training")


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
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    with atomically(out) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in files.items():
            archive.write(path, name)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(description="Check the prediction files against the course's input files, then zip "
                                    "them with the code for the course's submission.")
    parser.add_argument("--predictions_dir", type=Path, default=Path("predictions"),
                        help="folder of the prediction files (default: predictions)")
    parser.add_argument("--data_dir", type=Path, default=Path("data"),
                        help="folder of the course's input files (default: data)")
    parser.add_argument("--out", type=Path, default=Path("cs224n_default_final_project_submission.zip"),
                        help="the zip to write, replacing an earlier one (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    with user_errors_end_in_one_line("prepare_submit.py"):
        args = build_parser().parse_args(argv)
        for line in check_predictions(args.predictions_dir, args.data_dir):
            print(line)
        files = submission_files(ROOT, args.predictions_dir)
        write_zip(args.out, files)
        print(f"Submission zip file created: {args.out} ({len(files)} files)")


if __name__ == "__main__":
    main()
