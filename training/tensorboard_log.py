"""A run's metrics as TensorBoard event files (--tensorboard), in RUN_DIR/tensorboard/: the numbers of each
metrics.jsonl record (training loss and learning rate, each dev metric, seconds and tokens per second, peak
memory) as scalars at the record's optimizer step, so that `tensorboard --logdir runs` shows every run side by
side. metrics.jsonl stays the run's record; the events show the same numbers.
"""
from pathlib import Path
from typing import Any

from training.distributed import is_main
from training.run_log import is_number

FOLDER = "tensorboard"  # in the run directory
EVENT_FILES = "events.out.tfevents.*"  # as TensorBoard's writers name them


def event_files(run_directory: Path) -> list[Path]:
    """The event files of the run in `run_directory`."""
    return sorted((run_directory / FOLDER).glob(EVENT_FILES))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record by TensorBoard tag, `split/name`: train/loss, dev/accuracy,
    epoch/tokens_per_second, ... (a resume record holds none)."""
    return {f"{record['split']}/{name}": value for name, value in record.items()
            if name not in ("epoch", "step") and is_number(value)}


class TensorBoardSink:
    """Writes each record `RunLog` logs as scalars, flushed at once (records come every --log_every steps at
    most). `kept` are the records a resumed run keeps, those up to its checkpoint's step: events an earlier
    session logged after them are purged, as metrics.jsonl drops their lines; where no session wrote events
    yet, the kept records are written first, so the events start where metrics.jsonl does."""

    def __init__(self, run_directory: Path, kept: list[dict[str, Any]]):
        from torch.utils.tensorboard import SummaryWriter  # loads tensorboard: only for runs that ask for it

        earlier = bool(event_files(run_directory))
        purge_step = max((record["step"] for record in kept), default=-1) + 1 if earlier else None
        self.writer = SummaryWriter(run_directory / FOLDER, purge_step=purge_step)
        for record in [] if earlier else kept:
            self(record)

    def __call__(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()


def tensorboard_sink(run_directory: Path, enabled: bool, kept: list[dict[str, Any]]) -> TensorBoardSink | None:
    """The sink of a run's `RunLog` (see `TensorBoardSink`): with --tensorboard (`enabled`), on the main process
    only, which alone writes the run's files."""
    return TensorBoardSink(run_directory, kept) if enabled and is_main() else None
