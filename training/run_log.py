"""A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`.

Every line has its `split` ("train": the loss every --log_every steps; "dev": the dev metrics after each epoch;
"epoch": the epoch's training time and tokens per second; "resume": the settings a resume changed), the
`epoch` (from 0) and the optimizer `step`.
"""
import json
import math
from pathlib import Path
from typing import Any

from course.files import atomically
from flags import UserError
from training.distributed import is_main

RESUME_ADVICE = "mend or delete that line, then resume again"


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
    resumed run keeps (`read_records`), written back when the log opens."""

    def __init__(self, path: Path, picture: Path, records: list[dict[str, Any]]):
        self.path, self.picture, self.records = path, picture, records
        if is_main():
            with open(self.path, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in self.records)

    def log(self, **record: Any) -> None:
        self.records.append(record)
        if is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if not is_main():
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r["split"] == "train"]
        dev = [r for r in self.records if r["split"] == "dev"]
        metrics = sorted({k for r in dev for k, v in r.items() if isinstance(v, float)})
        # One panel per dev metric: their scales differ (accuracy near 1, perplexity in the hundreds).
        figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4 * (1 + len(metrics)), 3.5), squeeze=False)
        axes[0][0].plot([r["step"] for r in train], [r["loss"] for r in train])
        axes[0][0].set(xlabel="optimizer step", title="training loss")
        for axis, key in zip(axes[0][1:], metrics):
            axis.plot([r["epoch"] for r in dev if key in r], [r[key] for r in dev if key in r], marker="o")
            axis.set(xlabel="epoch", title=f"dev {key}")
        figure.tight_layout()
        save_figure(figure, self.picture)
        plt.close(figure)
