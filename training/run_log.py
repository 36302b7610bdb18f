"""A run's metrics, one JSON object a line in `metrics.jsonl`, and its learning curves in `curves.png`."""
import json
from pathlib import Path
from typing import Any

from training.distributed import barrier, is_main


class RunLog:
    """Every process keeps the records; only the main process writes the files. A resumed run keeps the
    lines up to its checkpoint's step: those after it will be logged again."""

    def __init__(self, path: Path, picture: Path, resume_step: int | None = None):
        self.path, self.picture = path, picture
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path) as f:
                self.records = [r for r in map(json.loads, f) if r.get("step", 0) <= resume_step]
        barrier()  # every process has read the old log before the main one rewrites it
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
