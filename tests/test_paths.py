"""No output replaces an input, another output, a run's own file or the project's own files: every script
refuses such paths at start-up, in one line naming both flags, before any model loads and with no file
changed. A file that cannot be written mid-run ends the command in one line naming it and saying how to go on."""
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import classifier
import paraphrase_detection
import prepare_submit
import sonnet_generation
from flags import PROJECT, UserError
from models.gpt2 import GPT2Model
from tests.test_settings import base_flags
from training import checkpoints, run_log

SCRIPTS = {"classifier": classifier, "paraphrase": paraphrase_detection, "sonnets": sonnet_generation}
INPUT, MODEL, OUTPUT, RUN_DIR = "input", "model", "output", "run directory"


@dataclass(frozen=True)
class Flag:
    """A flag that names a path: what the script does with it, and the name its file must have (a file the
    script derives from a folder flag), if any."""
    name: str
    kind: str
    file_name: str | None = None


FLAGS = {
    "classifier": [Flag("--data_dir", INPUT, "ids-sst-train.csv"), Flag("--extra_train", INPUT),
                   Flag("--model_path", MODEL), Flag("--predictions_dir", OUTPUT, "full-model-sst-dev-out.csv"),
                   Flag("--run_dir", RUN_DIR)],
    "paraphrase": [Flag("--para_train", INPUT), Flag("--para_dev", INPUT), Flag("--para_test", INPUT),
                   Flag("--extra_train", INPUT), Flag("--model_path", MODEL), Flag("--para_dev_out", OUTPUT),
                   Flag("--para_test_out", OUTPUT), Flag("--run_dir", RUN_DIR)],
    "sonnets": [Flag("--sonnet_path", INPUT), Flag("--held_out_dev_path", INPUT), Flag("--gold_dev_path", INPUT),
                Flag("--held_out_path", INPUT), Flag("--model_path", MODEL), Flag("--sonnet_dev_out", OUTPUT),
                Flag("--sonnet_out", OUTPUT), Flag("--run_dir", RUN_DIR)],
}


def naming(script: str, flag: Flag, path: Path, checkpoint: Path) -> list[str]:
    """The flags that make `flag` read or write `path` (whose folder is named sst, the classifier's dataset
    subfolder), with the input files it needs put in place."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if flag.kind == MODEL:
        shutil.copytree(checkpoint, folder, dirs_exist_ok=True)
        return [flag.name, str(folder)]
    if flag.kind == RUN_DIR:
        return [flag.name, str(folder.parent if script == "classifier" else folder)]
    if flag.name == "--data_dir":
        for split in ("train", "dev", "test-student"):
            (folder / f"ids-sst-{split}.csv").write_text("an input\n")
        return [flag.name, str(folder)]
    if flag.kind == INPUT:
        path.write_text("an input\n")
    return [flag.name, str(folder if flag.file_name else path)]


def colliding_path(output: Flag, other: Flag) -> str | None:
    """The file name at which `output` meets `other`; None where they cannot meet (two names fixed apart)."""
    fixed = {flag.file_name for flag in (output, other) if flag.file_name}
    if len(fixed) > 1:
        return None
    if {output.kind, other.kind} == {OUTPUT, RUN_DIR}:
        return None if fixed else "best.pt"  # a run's own file
    return fixed.pop() if fixed else "file.csv"


def pair_cases() -> list[tuple[str, Flag, Flag]]:
    """Every output flag against every input flag and every other output flag, where their files can meet."""
    cases = []
    for script, flags in FLAGS.items():
        outputs = [flag for flag in flags if flag.kind in (OUTPUT, RUN_DIR)]
        for index, output in enumerate(outputs):
            others = [flag for flag in flags if flag.kind in (INPUT, MODEL)] + outputs[index + 1:]
            cases += [(script, output, other) for other in others if colliding_path(output, other)]
    return cases


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the paths were checked")

    monkeypatch.setattr(GPT2Model, "__init__", refuse)


def refusal(capsys: pytest.CaptureFixture, script: str, argv: list[str], mid_run: bool = False) -> str:
    """The one line a refused command prints, last on stderr (`mid_run`: after the progress bars); it must exit
    with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        SCRIPTS[script].main(argv) if script in SCRIPTS else prepare_submit.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err
    assert mid_run or "\n" not in err
    return err.splitlines()[-1]


def test_every_flag_pair_that_can_meet_is_tested():
    assert len(pair_cases()) == 5 + 18 + 18
    assert ("sonnets", FLAGS["sonnets"][5], FLAGS["sonnets"][2]) in pair_cases()  # --sonnet_dev_out, gold sonnets


@pytest.mark.parametrize("script, output, other", pair_cases(),
                         ids=[f"{script} {output.name} {other.name}" for script, output, other in pair_cases()])
def test_an_output_that_meets_an_input_or_another_output_is_refused_at_start_up(capsys, tmp_path, tiny_checkpoint,
                                                                                 no_model, script, output, other):
    path = tmp_path / "w" / "sst" / colliding_path(output, other)
    argv = (base_flags(script, tiny_checkpoint[0], tmp_path) + naming(script, other, path, tiny_checkpoint[0])
            + naming(script, output, path, tiny_checkpoint[0]))
    before = file_hashes(tmp_path)
    message = refusal(capsys, script, argv)
    assert output.name in message and other.name in message and str(path.parent) in message, message
    assert file_hashes(tmp_path) == before
    assert not (tmp_path / "run").exists()


def test_the_gold_dev_sonnets_are_never_overwritten_by_the_generated_ones(capsys, tmp_path, tiny_checkpoint, no_model):
    gold = tmp_path / "TRUE_sonnets_held_out_dev.txt"
    shutil.copy("data/TRUE_sonnets_held_out_dev.txt", gold)
    argv = base_flags("sonnets", tiny_checkpoint[0], tmp_path) + ["--gold_dev_path", str(gold),
                                                                  "--sonnet_dev_out", str(gold)]
    assert refusal(capsys, "sonnets", argv) == (
        f"sonnet_generation.py: error: --sonnet_dev_out {gold}: is also --gold_dev_path {gold}, which this command "
        "reads; an output never replaces an input")
    assert gold.read_bytes() == Path("data/TRUE_sonnets_held_out_dev.txt").read_bytes()


def test_an_output_through_a_link_to_an_input_is_refused(capsys, tmp_path, tiny_checkpoint, no_model):
    train = tmp_path / "data/quora-train.csv"
    train.parent.mkdir()
    train.write_text("an input\n")
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    linked = tmp_path / "linked" / train.name
    argv = base_flags("paraphrase", tiny_checkpoint[0], tmp_path) + ["--para_train", str(train),
                                                                     "--para_test_out", str(linked)]
    message = refusal(capsys, "paraphrase", argv)
    assert f"--para_test_out {linked}: is also --para_train {train}" in message
    assert train.read_text() == "an input\n"


@pytest.mark.parametrize("script, flags", [
    ("paraphrase", ["--para_dev_out", "config.py"]),
    ("sonnets", ["--sonnet_out", "README.md"]),
    ("sonnets", ["--sonnet_dev_out", "requirements.txt"]),
    ("paraphrase", ["--para_test_out", "docs/flags.md"]),
    ("classifier", ["--predictions_dir", "models"]),
    ("paraphrase", ["--run_dir", "training"]),
    ("sonnets", ["--run_dir", "."]),
    ("sonnets", ["--run_dir", str(PROJECT / ".git" / "runs")]),
    ("prepare_submit", ["--out", "config.py"]),
    ("prepare_submit", ["--out", "models/gpt2.py"]),
])
def test_an_output_that_is_part_of_the_project_is_refused_and_the_project_left_as_it_was(
        capsys, tmp_path, tiny_checkpoint, no_model, script, flags):
    argv = (base_flags(script, tiny_checkpoint[0], tmp_path) if script in SCRIPTS else []) + flags
    before = {path: path.read_bytes() for path in PROJECT.glob("*") if path.is_file()}
    message = refusal(capsys, script, argv)
    assert f"{flags[0]} {flags[1]}" in message and "is part of the project itself" in message, message
    assert {path: path.read_bytes() for path in PROJECT.glob("*") if path.is_file()} == before
    assert not (PROJECT / ".git" / "runs").exists()


def test_prepare_submit_refuses_a_zip_in_place_of_what_it_checks(capsys, tmp_path):
    predictions, data = tmp_path / "predictions", tmp_path / "data"
    for folder in (predictions, data):
        folder.mkdir()
        (folder / "a.csv").write_text("an input\n")
    folders = ["--predictions_dir", str(predictions), "--data_dir", str(data)]
    for out, flag in ((predictions / "a.csv", "--predictions_dir"), (data / "b.zip", "--data_dir")):
        message = refusal(capsys, "prepare_submit", folders + ["--out", str(out)])
        assert f"--out {out}: " in message and f"{flag} {out.parent}, which this command reads" in message
    assert refusal(capsys, "prepare_submit", folders + ["--out", str(tmp_path)]).endswith(f"--out {tmp_path}: is a "
                                                                                           "directory")
    assert (predictions / "a.csv").read_text() == "an input\n" and not (data / "b.zip").exists()


def test_the_course_dev_command_writes_both_sonnet_outputs_to_one_file():
    settings = sonnet_generation.get_settings(["--held_out_sonnet_path", "data/sonnets_held_out_dev.txt",
                                               "--sonnet_out", "predictions/generated_sonnets_dev.txt"])
    assert settings.task.sonnet_out == settings.task.sonnet_dev_out


def test_outputs_may_lie_in_the_run_directory_where_no_name_is_the_runs(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    argv = base_flags("paraphrase", tiny_checkpoint[0], tmp_path) + [
        "--run_dir", str(run), "--para_dev_out", str(run / "dev.csv"), "--para_test_out", str(run / "epochs/best.pt")]
    assert paraphrase_detection.get_settings(argv).task.para_dev_out == run / "dev.csv"
    for name, owned in (("epoch3.pt", "epoch*.pt"), ("run.lock", "run.lock"), ("tensorboard", "tensorboard/")):
        with pytest.raises(UserError) as refused:
            paraphrase_detection.get_settings(argv + ["--para_test_out", str(run / name)])
        assert str(refused.value) == (f"--para_test_out {run / name}: is a path of the run in --run_dir {run} (its "
                                      f"own {owned}); pick another name or folder")


def test_without_training_the_run_directory_is_no_concern(tmp_path, tiny_checkpoint):
    argv = base_flags("sonnets", tiny_checkpoint[0], tmp_path) + ["--epochs", "0", "--run_dir", "data"]
    assert sonnet_generation.get_settings(argv).run.run_dir == Path("data")


# -----------------------------------------------------------------------------
# a file that cannot be written mid-run

def fail_on_call(count: int, error: Exception, original, path_ending: str = ""):
    """A stand-in for `original` that raises `error` on its `count`-th call with a path ending in `path_ending`."""
    calls = [0]

    def call(*args, **kwargs):
        calls[0] += not path_ending or any(isinstance(arg, Path) and str(arg).endswith(path_ending) for arg in args)
        if calls[0] == count:
            raise error
        return original(*args, **kwargs)

    return call


def small_sst(folder: Path) -> Path:
    """The course's SST files, 30 rows each; dev's are its first 6 of each class, so that grading knows every label."""
    folder.mkdir()
    for split in ("train", "dev", "test-student"):
        header, *rows = Path(f"data/ids-sst-{split}.csv").read_text().splitlines(keepends=True)
        if split == "dev":
            rows = [row for label in "01234" for row in [row for row in rows if row.endswith(f"\t{label}\n")][:6]]
        (folder / f"ids-sst-{split}.csv").write_text(header + "".join(rows[:30]))
    return folder


FAILED_WRITES = {
    # what fails: (module or class, function, its call that fails (with a path of that ending), the error, the file
    # the message names); epoch 1's, after epoch 0 saved last.pt, except the predictions, written after training
    "torch.save of last.pt": (checkpoints.torch, "save", (2, "last.pt.tmp"),
                              RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"),
                              "run/sst/last.pt"),
    "metrics.jsonl": (run_log.RunLog, "log", (3, ""),
                      PermissionError(13, "Permission denied", "RUN/run/sst/metrics.jsonl"), "run/sst/metrics.jsonl"),
    "a prediction file": (classifier, "write_predictions", (1, ""),
                          PermissionError(13, "Permission denied", "RUN/predictions/.x.tmp"),
                          "predictions/full-model-sst-dev-out.csv"),
}


@pytest.mark.parametrize("owner, name, call, error, named", FAILED_WRITES.values(), ids=FAILED_WRITES.keys())
def test_a_file_that_cannot_be_written_mid_run_ends_in_one_line_and_the_advised_resume_goes_on(
        monkeypatch, capsys, tmp_path, tiny_checkpoint, owner, name, call, error, named):
    if isinstance(error, OSError):
        error = type(error)(error.errno, error.strerror, error.filename.replace("RUN", str(tmp_path)))
    flags = base_flags("classifier", tiny_checkpoint[0], tmp_path) + ["--epochs", "2",
                                                                       "--data_dir", str(small_sst(tmp_path / "data"))]
    monkeypatch.setattr(owner, name, fail_on_call(call[0], error, getattr(owner, name), call[1]))
    message = refusal(capsys, "classifier", flags, mid_run=True)
    monkeypatch.undo()
    assert message.startswith(f"classifier.py: error: {tmp_path / named}: "), message
    assert message.endswith("the run directory keeps the last good state: free space or make the folder writable, "
                            "then add --resume")
    assert not (tmp_path / "run/sst/run.lock").exists()

    classifier.main(flags + ["--resume"])  # as advised
    assert len((tmp_path / "predictions/full-model-sst-test-out.csv").read_text().splitlines()) == 1 + 30


def test_without_a_run_a_failed_write_names_the_file_and_advises_running_again(monkeypatch, capsys, tmp_path,
                                                                               long_context_checkpoint):
    flags = base_flags("sonnets", long_context_checkpoint, tmp_path) + ["--epochs", "0"]
    error = PermissionError(13, "Permission denied", str(tmp_path / "predictions/.dev.txt.tmp"))
    monkeypatch.setattr(sonnet_generation, "write_sonnets", fail_on_call(1, error, sonnet_generation.write_sonnets))
    assert refusal(capsys, "sonnets", flags) == (
        f"sonnet_generation.py: error: {(tmp_path / 'predictions/dev.txt').resolve()}: Permission denied; free space "
        "or make the folder writable, then run the command again")
    monkeypatch.undo()
    sonnet_generation.main(flags)
    assert (tmp_path / "predictions/test.txt").is_file()


def test_a_checkpoint_torch_save_cannot_write_is_an_os_error_naming_it(monkeypatch, tmp_path):
    def cannot_open(state, path):
        raise RuntimeError(f"File {path} cannot be opened.")

    monkeypatch.setattr(checkpoints.torch, "save", cannot_open)
    with pytest.raises(OSError) as failed:
        checkpoints.save_checkpoint(tmp_path / "last.pt", {"model": torch.zeros(1)})
    assert failed.value.filename == str(tmp_path / "last.pt")
    assert failed.value.strerror == f"not written (File {tmp_path / 'last.pt.tmp'} cannot be opened.)"
