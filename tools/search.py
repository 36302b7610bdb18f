"""The Optuna search of a sweep: a study in the sweep directory, one trial (one run) at a time, each epoch's dev
metric reported to the pruner as the run logs it, and trials left unfinished by a stopped sweep queued again."""
import signal
import subprocess
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from flags import UserError, shown
from tools.launch import Launcher, run_failed, runs_stopped_on_exit
from tools.sweep_plan import ADVICE, planned_run, result_text
from tools.sweep_spec import Spec
from training.run_dir import SETTINGS_FILE, read_record, result_of
from training.run_log import read_records

STUDY_FILE = "study.db"
POLL_SECONDS = 2.0  # how often a search reads a running trial's metrics.jsonl


def run_study(spec: Spec, directory: Path, launcher: Launcher) -> list[Path]:
    """Trials until the study holds `trials` that ended (completed or pruned), one at a time; then the best is
    printed, and the run directories of the completed ones returned. A trial a stopped sweep left running
    (interrupted or killed) is marked failed and queued again with its values and run directory, so that its
    run continues from its last checkpoint, or is only scored if it had finished. A failed run fails its trial
    and stops the sweep; the same command goes on with new trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.path.stem, storage=f"sqlite:///{directory / STUDY_FILE}",
                                load_if_exists=True, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    # TPE's random start would draw the same values again after a restart with the same seed
    study.sampler = optuna.samplers.TPESampler(seed=spec.seeds[0] + len(study.trials))
    requeue_stale_trials(study)
    trials = spec.search.trials
    bar = tqdm(total=trials, initial=min(ended_trials(study), trials), desc=f"search {spec.path.stem}", unit="trial")
    with bar, runs_stopped_on_exit(launcher):
        while ended_trials(study) < trials:
            run_trial(spec, directory, study, launcher)
            bar.update()
    best = study.best_trial
    print(f"best: {best.user_attrs['run']}, {spec.script.metric} {best.value:.4f}: "
          + ", ".join(f"{name} {shown(value)}" for name, value in best.params.items()))
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [run_dir for trial in completed for run_dir in sorted(
        path.parent for path in (directory / trial.user_attrs["run"]).rglob(SETTINGS_FILE))]


def ended_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def requeue_stale_trials(study: optuna.Study) -> None:
    """Trials left running by a sweep that stopped: failed, and queued again with their flags and directory."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = trial.user_attrs.get("run", f"trial-{trial.number}")
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run": run, "continues": trial.number})
        print(f"{run}: left unfinished by an earlier sweep; it continues as a new trial")


def run_trial(spec: Spec, directory: Path, study: optuna.Study, launcher: Launcher) -> None:
    """One trial: its run, its dev metric reported after each epoch, pruned when the pruner says so (its
    checkpoints are deleted then: it will not continue), told to the study with the run's best dev metric."""
    trial = study.ask(spec.search.space)
    name = trial.user_attrs.get("run", f"trial-{trial.number}")
    trial.set_user_attr("run", name)
    try:
        run = planned_run(spec, directory / name, trial.params, spec.seeds[0])
    except UserError:  # values the script refuses together: the spec's space must change
        study.tell(trial, state=TrialState.FAIL)
        raise
    scores = DevScores(trial, run.run_dirs[0] / "metrics.jsonl", spec.script.metric)
    if not run.finished:
        process = launcher.start(run)
        pruned = pruned_while_running(process, scores)
        status = launcher.wait(process)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            for checkpoint in run.run_dirs[0].glob("*.pt"):
                checkpoint.unlink()
            tqdm.write(f"{name}: pruned after epoch {max(scores.reported)}")
            return
        if status:  # failed, not queued again: the same values would fail again, and the search goes on without
            study.tell(trial, state=TrialState.FAIL)
            raise run_failed(run, status)
    scores.report(strict=True)
    value = result_of(read_record(run.run_dirs[0], ADVICE)).best_metrics[spec.script.metric]
    study.tell(trial, value)
    tqdm.write(f"{name}: {result_text(run.run_dirs[0])}; "
               + ", ".join(f"{flag} {shown(v)}" for flag, v in trial.params.items()))


class DevScores:
    """A trial's dev metric after each epoch, reported to Optuna as its run's metrics.jsonl gains them."""

    def __init__(self, trial: optuna.Trial, log_file: Path, metric: str):
        self.trial, self.log_file, self.metric = trial, log_file, metric
        self.reported: set[int] = set()

    def report(self, strict: bool) -> bool:
        """Report the epochs not reported yet; whether there were any. While the run writes the log, a line
        may be half written: unless `strict`, it is read at the next poll instead."""
        try:
            records = read_records(self.log_file, advice=ADVICE)
        except UserError:
            if strict:
                raise
            return False
        new = [r for r in records if r["split"] == "dev" and r["epoch"] not in self.reported and self.metric in r]
        for record in new:
            self.trial.report(record[self.metric], record["epoch"])
            self.reported.add(record["epoch"])
        return bool(new)


def pruned_while_running(process: subprocess.Popen, scores: DevScores) -> bool:
    """Follow a trial's run until it ends; if the pruner stops the trial first, SIGTERM the run (it saves and
    exits) and say so."""
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            pass
        if scores.report(strict=False) and scores.trial.should_prune():
            process.send_signal(signal.SIGTERM)
            return True
