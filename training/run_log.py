"""A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`."""
import json
from pathlib import Path
from typing import Any

from config import UserError
from training.distributed import is_main


def read_records(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """A resumed run's log lines up to its checkpoint's step (those after it will be logged again). A line
    that is not a JSON object is refused, naming the file and line."""
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except ValueError as error:  # not JSON, or not UTF-8
                record = error
            if not isinstance(record, dict):
                raise UserError(f"{path}, line {number}: not a JSON object ({record}); mend or delete that line, "
                                "then resume again")
            if record.get("step", 0) <= up_to_step:
                records.append(record)
    return records


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
        figure.savefig(self.picture)
        plt.close(figure)
