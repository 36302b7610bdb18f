"""A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`.

Every line has its `split` ("train": the loss every --log_every steps; "dev": the dev metrics after each epoch;
"epoch": the epoch's training time and tokens per second, and its mean training loss `EPOCH_LOSS`; "resume":
the settings a resume changed), the `epoch` (from 0) and the optimizer `step`.
"""
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course.files import atomically
from flags import UserError
from training.distributed import is_main

if TYPE_CHECKING:  # matplotlib loads only to draw
    from matplotlib.figure import Figure

RESUME_ADVICE = "mend or delete that line, then resume again"
EPOCH_LOSS = "train_loss"  # the epoch record's mean training loss: a curve even with fewer steps than --log_every


def is_number(value: Any) -> bool:
    """A JSON number (JSON's true and false are Python ints, and not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A whole JSON number from 0: an epoch, a step."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def record_problem(record: Any) -> str | None:
    """What keeps a parsed line from being a record `RunLog` writes; None if nothing does."""
    if not isinstance(record, dict):
        return f"not a JSON object ({record})"
    if not (isinstance(record.get("split"), str) and is_count(record.get("epoch")) and is_count(record.get("step"))):
        return "not a record of this code (a split, and a whole epoch and step from 0)"
    if record["split"] == "epoch" and not (is_number(record.get("seconds"))
                                           and is_number(record.get("tokens_per_second"))):
        return "an epoch record without its seconds and tokens_per_second"
    return None


def read_records(path: Path, up_to_step: float = math.inf, advice: str = RESUME_ADVICE) -> list[dict[str, Any]]:
    """The log's records up to `up_to_step`: a resumed run keeps those up to its checkpoint's step (those
    after it will be logged again). A line that is not a record is refused, naming the file and line, then
    `advice`: what the reader can do."""
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except ValueError as error:  # not JSON, or not UTF-8
                record = error
            problem = record_problem(record)
            if problem:
                raise UserError(f"{path}, line {number}: {problem}; {advice}")
            if record["step"] <= up_to_step:
                records.append(record)
    return records


def training_speed(records: list[dict[str, Any]]) -> float:
    """Training tokens per second over the epochs logged: their tokens over their seconds."""
    epochs = [record for record in records if record["split"] == "epoch"]
    seconds = sum(record["seconds"] for record in epochs)
    return sum(record["tokens_per_second"] * record["seconds"] for record in epochs) / seconds if seconds else 0.0


def save_figure(figure: Any, path: Path) -> None:
    """`figure` as a PNG at `path`, written `atomically`: no reader sees half a picture."""
    with atomically(path) as f:
        figure.savefig(f, format="png")


class RunLog:
    """Every process keeps the records; only the main process writes the files. `records` are those a
    resumed run keeps (`read_records`), written back when the log opens. A `sink` (the main process's only) also
    gets each new record, e.g. training/tensorboard.py's event files."""

    def __init__(self, path: Path, picture: Path, records: list[dict[str, Any]],
                 sink: Callable[[dict[str, Any]], None] | None = None):
        self.path, self.picture, self.records, self.sink = path, picture, records, sink
        if is_main():
            with open(self.path, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in self.records)

    def log(self, **record: Any) -> None:
        self.records.append(record)
        if is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.sink:
                self.sink(record)

    def plot(self, title: str | None = None, best_epoch: int | None = None) -> None:
        """Draw curves.png: titled with the run directory unless `title` says more, the best epoch marked when
        it is known (when the run has ended)."""
        if is_main():
            save_figure(learning_curves(self.records, title or str(self.picture.parent), best_epoch), self.picture)


def learning_curves(records: list[dict[str, Any]], title: str, best_epoch: int | None = None) -> "Figure":
    """The figure of curves.png: the training loss by optimizer step (every --log_every steps, and each epoch's
    mean at the epoch's last step), then one panel per dev metric by epoch; `best_epoch` marked in each."""
    from matplotlib.figure import Figure  # without pyplot: no window, no figure left open
    from matplotlib.ticker import MaxNLocator

    train = [r for r in records if r["split"] == "train"]
    epochs = [r for r in records if r["split"] == "epoch" and EPOCH_LOSS in r]
    dev = [r for r in records if r["split"] == "dev"]
    metrics = sorted({k for r in dev for k, v in r.items() if isinstance(v, float)})
    # One panel per dev metric: their scales differ (accuracy near 1, perplexity in the hundreds).
    figure = Figure(figsize=(4 * (1 + len(metrics)), 3.8), layout="tight")
    axes = figure.subplots(1, 1 + len(metrics), squeeze=False)
    loss_axis, *metric_axes = axes[0]
    if train:
        loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="every --log_every steps")
    loss_axis.plot([r["step"] for r in epochs], [r[EPOCH_LOSS] for r in epochs], marker="o", label="epoch mean")
    loss_axis.set(xlabel="optimizer step", title="training loss")
    for axis, key in zip(metric_axes, metrics):
        axis.plot([r["epoch"] for r in dev if key in r], [r[key] for r in dev if key in r], marker="o")
        axis.set(xlabel="epoch", title=f"dev {key}")
    best_step = next((r["step"] for r in dev if r["epoch"] == best_epoch), None)
    if best_step is not None:  # the loss panel counts steps: the best epoch ended at its dev record's step
        loss_axis.axvline(best_step, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
        for axis in metric_axes:
            axis.axvline(best_epoch, color="grey", linestyle="--")
    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
    loss_axis.legend(fontsize="small")
    figure.suptitle(title)
    return figure
