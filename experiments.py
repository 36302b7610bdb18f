"""Experiments over the task scripts: a sweep of flag values and seeds (or an Optuna search) from a spec file,
each run in a directory of its own, and the comparison table of finished runs. The spec format is described
in tools/sweep.py.

    python experiments.py sweep SPEC.toml [--dir DIR]
    python experiments.py compare DIR [DIR ...] [--csv FILE] [--plot FILE]
"""
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flags import FlagParser, add_flags, from_flags, user_errors_end_in_one_line
from tools.compare import CompareSettings, find_runs
from tools.launch import SweepStopped
from tools.sweep import run_sweep, show_comparison
from tools.sweep_spec import load_spec

PROG = "experiments.py"


def _sweep_command(args: argparse.Namespace) -> None:
    run_sweep(load_spec(args.spec), args.dir or Path("sweeps") / args.spec.stem)


def _compare_command(args: argparse.Namespace) -> None:
    settings = from_flags(CompareSettings, args)
    show_comparison(find_runs(args.paths), csv_file=settings.csv, plot_file=settings.plot)


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="run every run of a spec file not finished yet, then compare them")
    sweep.add_argument("spec", type=Path, help="TOML spec: script, flags, seeds, and [grid] or [search]")
    sweep.add_argument("--dir", type=Path, help="the sweep's directory (default: sweeps/SPEC, SPEC's name without "
                                                ".toml); running the sweep again there continues it")
    sweep.set_defaults(run=_sweep_command)
    comparison = commands.add_parser("compare", help="the comparison table of finished runs, grouped over seeds")
    comparison.add_argument("paths", nargs="+", type=Path, help="run directories, or folders that hold them")
    add_flags(comparison, CompareSettings)
    comparison.set_defaults(run=_compare_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    with user_errors_end_in_one_line(PROG):
        args = build_parser().parse_args(argv)
        try:
            args.run(args)
        except SweepStopped as stop:
            print(f"{PROG}: {stop}", file=sys.stderr)
            raise SystemExit(stop.status) from None


if __name__ == "__main__":
    main()
