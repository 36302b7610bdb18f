"""experiments.py: sweeps of real classifier.py runs on a very small random checkpoint (a grid stopped by a
failed run and restarted; an Optuna search stopped before it learned a finished trial's score and restarted),
pruning, one run per GPU, and specs refused at start-up."""
import contextlib
import csv
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import experiments
from tests.conftest import save_hf_gpt2
from tools import launch, search, sweep_plan, sweep_spec

MICRO = dict(n_embd=32, n_layer=1, n_head=2, n_positions=32)  # CFIMDB reviews cut to 32 tokens: seconds a run
GRID_NAMES = ["lr=0.001,seed=1", "lr=0.001,seed=2", "lr=0.0001,seed=1", "lr=0.0001,seed=2"]
START_RUN = launch.start_run  # the real one, which the tests' stand-ins call


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("micro-gpt2")
    save_hf_gpt2(directory, **MICRO)
    return directory


def write_spec(path: Path, checkpoint: Path, flags: str = "", rest: str = "", epochs: int = 1) -> Path:
    """A classifier.py spec on 16 CFIMDB reviews, one batch an epoch, with `flags` added and `rest` after."""
    path.write_text(f'script = "classifier.py"\nseeds = [1, 2]\n\n[flags]\nmodel_path = "{checkpoint}"\n'
                    f'"fine-tune-mode" = "full-model"\ndataset = "cfimdb"\ntrain_limit = 16\nbatch_size = 16\n'
                    f"epochs = {epochs}\n{flags}\n{rest}")
    return path


@dataclass
class Launches:
    """Stands in for `launch.start_run`: records the runs started, by name. Runs named in `fail` fail at once
    (their log ends with a script's one-line refusal); the others start for real."""
    fail: tuple[str, ...] = ()
    names: list[str] = field(default_factory=list)

    def __call__(self, run: sweep_plan.PlannedRun, script: sweep_spec.TaskScript, device: str | None,
                 lock_fd: int) -> subprocess.Popen:
        self.names.append(run.name)
        if run.name in self.fail:
            run.directory.mkdir(parents=True, exist_ok=True)
            with open(run.log_file, "a") as log:
                return subprocess.Popen([sys.executable, "-c", "print('classifier.py: error: out of luck'); exit(1)"],
                                        stdout=log)
        return START_RUN(run, script, device, lock_fd)


def sweep_command(*argv: str) -> tuple[int, str, str]:
    """experiments.py with `argv`: its exit status, stdout and stderr."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            experiments.main(list(argv))
        except SystemExit as exit:
            status = exit.code
    return status, out.getvalue(), err.getvalue()


@dataclass
class GridSweep:
    directory: Path
    first: tuple[int, str, str]  # (status, stdout, stderr) of the sweep a failed run stopped
    first_launches: list[str]
    second: tuple[int, str, str]  # of the same command again
    second_launches: list[str]
    first_run_files: dict[str, float]  # the first run's files and their modification times before the restart


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, micro_checkpoint: Path) -> GridSweep:
    """Two learning rates by two seeds. The second run fails, which stops the sweep; the same command again
    finishes it."""
    root = tmp_path_factory.mktemp("grid")
    spec = write_spec(root / "lrs.toml", micro_checkpoint, rest="[grid]\nlr = [1e-3, 1e-4]\n")
    directory = root / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        launches = Launches(fail=(GRID_NAMES[1],))
        patch.setattr(launch, "start_run", launches)
        first = sweep_command("sweep", str(spec), "--dir", str(directory))
        first_run = directory / GRID_NAMES[0]
        files = {str(path): path.stat().st_mtime_ns for path in first_run.rglob("*") if path.is_file()}
        restart = Launches()
        patch.setattr(launch, "start_run", restart)
        second = sweep_command("sweep", str(spec), "--dir", str(directory))
    return GridSweep(directory, first, launches.names, second, restart.names, files)


def test_a_failed_run_stops_the_sweep_in_one_line_naming_the_run_and_its_log(grid):
    status, _, stderr = grid.first
    log = grid.directory / GRID_NAMES[1] / "sweep.log"
    assert status == 1
    assert stderr.splitlines()[-1] == (f"experiments.py: error: run {GRID_NAMES[1]} failed (exit status 1): "
                                       f"classifier.py: error: out of luck; its log: {log}")
    assert grid.first_launches == GRID_NAMES[:2]  # nothing started after the failure


def test_a_restarted_sweep_runs_only_the_runs_not_finished(grid):
    status, stdout, _ = grid.second
    assert status == 0
    assert grid.second_launches == GRID_NAMES[1:]
    assert f"{GRID_NAMES[0]}: finished, skipped" in stdout.splitlines()
    first_run = grid.directory / GRID_NAMES[0]
    assert {str(path): path.stat().st_mtime_ns for path in first_run.rglob("*") if path.is_file()} == \
        grid.first_run_files


def test_a_sweep_of_two_settings_by_two_seeds_ends_with_their_table(grid):
    _, stdout, _ = grid.second
    for name in GRID_NAMES:
        record = json.loads((grid.directory / name / "cfimdb" / "settings.json").read_text())
        assert record["result"]["metric"] == "accuracy"
        assert (grid.directory / name / "predictions" / "full-model-cfimdb-test-out.csv").is_file()
    with open(grid.directory / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["--lr"] for row in rows) == ["0.0001", "0.001"]
    assert [(row["n_seeds"], row["seeds"]) for row in rows] == [("2", "1 2")] * 2
    table = (grid.directory / "comparison.md").read_text()
    assert table in stdout and len(table.splitlines()) == 4  # header, rule, two groups
    assert (grid.directory / "dev_curves.png").stat().st_size > 0
    status, compared, _ = sweep_command("compare", str(grid.directory))
    assert (status, compared) == (0, table)


def test_an_interrupted_search_resumes_from_its_study_without_training_a_finished_run_again(
        tmp_path, micro_checkpoint, monkeypatch):
    """Stopped after the first trial's run finished but before the study learned its score: the restart scores
    that run from its directory, then runs the two trials left."""
    spec = write_spec(tmp_path / "search.toml", micro_checkpoint, epochs=2,
                      rest="[search]\ntrials = 3\n[search.space]\nlr = { low = 1e-4, high = 1e-2, log = true }\n")
    directory = tmp_path / "search"
    first, second = Launches(), Launches()
    report = search.DevScores.report

    def stopped_before_the_score(scores: search.DevScores, strict: bool) -> bool:
        if strict:
            raise KeyboardInterrupt
        return report(scores, strict)

    monkeypatch.setattr(launch, "start_run", first)
    monkeypatch.setattr(search.DevScores, "report", stopped_before_the_score)
    status, _, stderr = sweep_command("sweep", str(spec), "--dir", str(directory))
    assert status == 130 and stderr.splitlines()[-1].startswith("experiments.py: stopped by SIGINT")
    assert first.names == ["trial-0"]
    checkpoint = directory / "trial-0" / "cfimdb" / "last.pt"
    trained = checkpoint.stat().st_mtime_ns

    monkeypatch.setattr(launch, "start_run", second)
    monkeypatch.setattr(search.DevScores, "report", report)
    status, stdout, _ = sweep_command("sweep", str(spec), "--dir", str(directory))
    assert status == 0
    assert second.names == ["trial-2", "trial-3"]  # trial 1 took over trial-0's finished run
    assert checkpoint.stat().st_mtime_ns == trained
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{directory / 'study.db'}")
    assert [trial.state for trial in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["run"] == "trial-0"
    result = json.loads((directory / "trial-0" / "cfimdb" / "settings.json").read_text())["result"]
    assert study.trials[1].value == result["best_metrics"]["accuracy"]
    assert list(study.trials[1].intermediate_values) == [0, 1]  # both epochs, read back from metrics.jsonl
    assert len({trial.params["lr"] for trial in study.trials[1:]}) == 3
    assert len((directory / "comparison.md").read_text().splitlines()) == 2 + 3


def test_a_trial_whose_dev_metric_falls_behind_is_pruned_and_its_run_stopped(tmp_path):
    log = tmp_path / "metrics.jsonl"
    program = (f"import json, time; open({str(log)!r}, 'w').write(json.dumps({{'split': 'dev', 'epoch': 0, "
               "'step': 1, 'accuracy': 0.5}) + '\\n'); time.sleep(60)")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    trial = study.ask()
    started = time.time()
    process = subprocess.Popen([sys.executable, "-c", program])
    assert search.pruned_while_running(process, search.DevScores(trial, log, "accuracy"))
    assert process.wait(timeout=10) == -15  # SIGTERM, which the scripts answer by saving last.pt
    assert time.time() - started < 30
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[0].intermediate_values == {0: 0.5}


def test_several_gpus_run_one_run_each_at_a_time(tmp_path, monkeypatch):
    program = tmp_path / "task.py"
    program.write_text("import os, time\nprint(os.environ['CUDA_VISIBLE_DEVICES'], time.time())\ntime.sleep(1)\n"
                       "print(time.time())\n")
    runs = [sweep_plan.PlannedRun(f"run{i}", tmp_path / f"run{i}", (), (), use_gpu=True) for i in range(4)]
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert launch.gpus_for(runs) == ["3", "5"]
    assert launch.gpus_for(runs[:1] + [sweep_plan.PlannedRun("cpu", tmp_path, (), (), use_gpu=False)]) == [None]
    with open(tmp_path / "lock", "w") as lock:
        launcher = launch.Launcher(sweep_spec.TaskScript(str(program), "accuracy", {}), lock.fileno())
        assert sorted(run.name for run in launch.finish_runs(runs, launcher, ["3", "5"])) == [r.name for r in runs]
    spans = {}  # device -> [(start, end)] of its runs
    for run in runs:
        (device, start), end = (line.split() for line in run.log_file.read_text().splitlines()[1:])
        spans.setdefault(device, []).append((float(start), float(end[0])))
    assert sorted(spans) == ["3", "5"] and all(len(s) == 2 for s in spans.values())
    for device_spans in spans.values():  # one run at a time on each GPU
        (_, first_end), (second_start, _) = sorted(device_spans)
        assert first_end <= second_start
    (start_a, end_a), (start_b, end_b) = spans["3"][0], spans["5"][0]
    assert start_a < end_b and start_b < end_a  # the GPUs' first runs overlap


@pytest.mark.parametrize("flags, rest, refusal", [
    ("", "[serach]\ntrials = 2\n", "unknown key 'serach'; a spec has script, flags, seeds, grid, search"),
    ("", "[grid]\nlrr = [1e-3]\n", "grid.lrr: classifier.py has no flag --lrr (did you mean lr?)"),
    ("", "[grid]\nlr = [1e-3, -1]\n", "run lr=-1,seed=1: refused by classifier.py: --lr -1: must be greater than 0"),
    ("", "[grid]\nclip_norm = ['x']\n",
     "run clip_norm=x,seed=1: refused by classifier.py: argument --clip_norm: invalid float value: 'x'"),
    ("seed = 3", "", "flags.seed: a spec may not give --seed: the sweep gives each run its seed from seeds = [...]"),
    ("predictions_dir = 'out'", "", "flags.predictions_dir: a spec may not give --predictions_dir: each run writes "
                                    "it into its own directory"),
    ("", "[grid]\nrun_dir = ['a', 'b']\n", "grid.run_dir: a spec may not give --run_dir"),
    ("lora = 1", "", "flags.lora: --lora is a switch: give true or false, not 1"),
    ("", "[grid]\nbatch_size = [8, 16]\n", "grid.batch_size sets the flag that flags.batch_size sets already"),
    ("", "[grid]\nlr = [1e-3, 1e-3]\n", "grid.lr: lists 0.001 twice"),
    ("", "[search]\ntrials = 2\n[search.space]\nlr = { low = 1e-3, high = 1e-5 }\n",
     "search.space.lr: low 0.001 must be below high 1e-05"),
    ("", "[search]\ntrials = 2\n[search.space]\nlr = { low = 0.0, high = 1e-3 }\n",
     "search.space.lr at 0.0: refused by classifier.py: --lr 0: must be greater than 0"),
    ("", "[search]\ntrials = 2\n[search.space]\nlr = { low = 1e-5, high = 1e-3, logs = true }\n",
     "search.space.lr: give { low = ..., high = ... } (with log = true, or a step), or { choices = [...] }; 'logs'"),
    ("", "[search]\ntrials = 0\n", "search.trials must be a whole number above 0, not 0"),
    ("", "[grid]\nlr = [1e-3]\n[search]\ntrials = 2\n", "give [grid] or [search], not both"),
    ("", "[grid\n", "not TOML: "),
])
def test_a_bad_spec_is_refused_at_start_up_in_one_line_naming_the_file(tmp_path, micro_checkpoint, monkeypatch,
                                                                       flags, rest, refusal):
    spec = write_spec(tmp_path / "bad.toml", micro_checkpoint, flags, rest)
    launches = Launches()
    monkeypatch.setattr(launch, "start_run", launches)
    status, _, stderr = sweep_command("sweep", str(spec), "--dir", str(tmp_path / "sweep"))
    assert status == 2
    assert stderr.startswith(f"experiments.py: error: {spec}: ") and refusal in stderr
    assert len(stderr.splitlines()) == 1
    assert launches.names == [] and not (tmp_path / "sweep").exists()


def test_a_sweep_directory_of_other_base_flags_is_refused(tmp_path, micro_checkpoint, monkeypatch):
    directory = tmp_path / "sweep"
    directory.mkdir()
    (directory / "sweep.json").write_text(json.dumps({"script": "classifier.py", "search": False, "flags": {
        "model_path": str(micro_checkpoint), "fine-tune-mode": "full-model", "dataset": "cfimdb", "train_limit": 16,
        "batch_size": 16, "epochs": 3}}))
    launches = Launches()
    monkeypatch.setattr(launch, "start_run", launches)
    spec = write_spec(tmp_path / "lrs.toml", micro_checkpoint, rest="[grid]\nlr = [1e-3]\n")
    status, _, stderr = sweep_command("sweep", str(spec), "--dir", str(directory))
    assert (status, launches.names) == (2, [])
    assert stderr == (f"experiments.py: error: {directory} holds a sweep of other settings than {spec} "
                      "(flags.epochs 3, now 1): its runs would not compare with this spec's; give this spec another "
                      "--dir\n")
