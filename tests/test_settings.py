"""Flags are checked at start-up; run directories are never destroyed by accident; --resume is honest; and
the advice in every refusal works when followed."""
import hashlib
import json
import re
import shlex
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import classifier
import paraphrase_detection
import sonnet_generation
from course.files import read_predictions
from models.gpt2 import GPT2Model
from training import loop

SCRIPTS = {"classifier": classifier, "paraphrase": paraphrase_detection, "sonnets": sonnet_generation}


def base_flags(script: str, checkpoint: Path, out: Path) -> list[str]:
    """A small run of `script` writing everything under `out`."""
    common = ["--model_path", str(checkpoint), "--epochs", "1", "--lr", "1e-3", "--run_dir", str(out / "run")]
    if script == "classifier":
        return common + ["--dataset", "sst", "--fine-tune-mode", "full-model", "--train_limit", "16",
                         "--batch_size", "8", "--predictions_dir", str(out / "predictions")]
    if script == "paraphrase":
        return common + ["--train_limit", "16", "--para_dev_out", str(out / "predictions/dev.csv"),
                         "--para_test_out", str(out / "predictions/test.csv")]
    return common + ["--train_limit", "8", "--decoding", "greedy", "--max_new_tokens", "8",
                     "--sonnet_dev_out", str(out / "predictions/dev.txt"),
                     "--sonnet_out", str(out / "predictions/test.txt")]


@pytest.fixture(scope="module")
def checkpoint(long_context_checkpoint: Path) -> Path:
    return long_context_checkpoint  # long enough a context for whole sonnets


def refusal(capsys: pytest.CaptureFixture, script: str, argv: list[str]) -> str:
    """The one line a refused run prints; it must exit with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        SCRIPTS[script].main(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message and "\n" not in message and "Traceback" not in message
    return message


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# script | flags added to a small run's | the one-line refusal (a regular expression)
BAD_FLAGS = r"""
classifier | --clip_norm -1 | --clip_norm -1: must be at least 0 \(0 turns clipping off\)
classifier | --epochs -1 | --epochs -1: must be at least 0
classifier | --grad_accum -1 | --grad_accum -1: must be at least 1
classifier | --grad_accum 0 | --grad_accum 0: must be at least 1
classifier | --batch_size 0 | --batch_size 0: must be at least 1
classifier | --lr 0 | --lr 0: must be greater than 0
classifier | --lr nan | --lr nan: must be greater than 0
classifier | --lr inf | --lr inf: must be greater than 0
classifier | --weight_decay -0.1 | --weight_decay -0.1: must be at least 0
classifier | --warmup_ratio 1.5 | --warmup_ratio 1.5: must be in \[0, 1\]
classifier | --layer_lr_decay 0 | --layer_lr_decay 0: must be in \(0, 1\]
classifier | --early_stopping -2 | --early_stopping -2: must be at least 0
classifier | --keep_best 0 | --keep_best 0: must be at least 1
classifier | --train_limit -5 | --train_limit -5: must be at least 0
classifier | --seed -1 | --seed -1: must be in \[0, 4294967295\]
classifier | --log_every 0 | --log_every 0: must be at least 1
classifier | --head_dropout 1 | --head_dropout 1: must be in \[0, 1\)
classifier | --hidden_dropout_prob -0.5 | --head_dropout -0.5: must be in \[0, 1\)
classifier | --label_smoothing 1 | --label_smoothing 1: must be in \[0, 1\)
classifier | --prompt Review: | --prompt 'Review:': must contain \{sentence\}, and no other
classifier | --prompt '{sentence} {label}' | must contain \{sentence\}, and no other \{field\}
classifier | --prompt '{sentence' | --prompt '\{sentence': not a template
classifier | --lora_rank 0 | --lora_rank 0: must be at least 1
classifier | --lora_alpha 0 | --lora_alpha 0: must be greater than 0
classifier | --lora_dropout 1 | --lora_dropout 1: must be in \[0, 1\)
classifier | --lora --lora_targets query,mlp | --lora_targets 'query,mlp': must be distinct names
classifier | --dora | --dora: only with --lora
classifier | --lora --train_top_layers 1 | --lora: cannot be combined with --train_top_layers
classifier | --ulmfit --train_top_layers 1 | --ulmfit: cannot be combined with --train_top_layers
classifier | --train_top_layers 3 | --train_top_layers 3: must be in \[0, 2\] \(the model has 2
classifier | --fine-tune-mode last-linear-layer --lora | --lora: .*use --fine-tune-mode full-model
classifier | --cloze --pooling mean | --pooling 'mean': --cloze reads the last token
classifier | --fine-tune-mode last-linear-layer --cloze | --cloze: has no new head to train
classifier | --label_words bad,good | --label_words 'bad,good': only with --cloze
classifier | --cloze --label_words bad,good | sst has 5 classes, and needs as many words
classifier | --dropout_samples 2 --head_dropout 0 | --dropout_samples 2: needs --head_dropout > 0
classifier | --contrastive -0.5 | --contrastive -0.5: must be at least 0
classifier | --lm_loss -1 | --lm_loss -1: must be at least 0
classifier | --contrastive_temperature 0 | --contrastive_temperature 0: must be greater than 0
classifier | --keep_layers 3 | --keep_layers 3: must be in \[0, 2\] \(the model has 2 layers; 0 keeps them all\)
classifier | --keep_layers -1 | --keep_layers -1: must be in \[0, 2\]
classifier | --extra_train data/no-such.csv --dataset sst | --extra_train data/no-such.csv: no such file
classifier | --extra_train data/ids-sst-train.csv --dataset both | --extra_train data/ids-sst-train.csv: holds one dataset's labels
classifier | --precision bf16 | --precision 'bf16': is for GPUs: add --use_gpu, or use --precision fp32
paraphrase | --precision tf32 | --precision 'tf32': is for GPUs: add --use_gpu, or use --precision fp32
classifier | --precision half | argument --precision: invalid choice: 'half'
classifier | --resume --overwrite | --overwrite: cannot be combined with --resume
classifier | --resume --epochs 0 | --resume: continues training up to --epochs
classifier | --model_path no/such/dir | --model_path no/such/dir: not a directory holding config.json
classifier | --data_dir tests | --data_dir tests: holds no ids-sst-train.csv
classifier | --predictions_dir README.md | --predictions_dir README.md: is a file
classifier | --epochs two | argument --epochs: invalid int value: 'two'
classifier | --fine-tune-mode all | argument --fine-tune-mode: invalid choice: 'all'
paraphrase | --prompt 'Is {s1} the same?' | --prompt 'Is \{s1\} the same\?': must contain \{s1\} and \{s2\}
paraphrase | --eval_batch_size 0 | --eval_batch_size 0: must be at least 1
paraphrase | --dropout_samples 2 | --dropout_samples 2: needs --head_dropout > 0
paraphrase | --contrastive_temperature 0 | --contrastive_temperature 0: must be greater than 0
paraphrase | --rdrop -1 | --rdrop -1: must be at least 0
paraphrase | --k_shot -1 | --k_shot -1: must be at least 0
paraphrase | --para_train data/no-such.csv | --para_train data/no-such.csv: no such file
paraphrase | --para_dev_out data | --para_dev_out data: is a directory
paraphrase | --para_test_out README.md/test.csv | --para_test_out README.md/test.csv: cannot be written
paraphrase | --extra_train data/no-such.csv | --extra_train data/no-such.csv: no such file
paraphrase | --ulmfit --train_top_layers 1 | --ulmfit: cannot be combined with --train_top_layers
paraphrase | --prefix_length 4 | unrecognized arguments: --prefix_length 4
sonnets    | --top_p 1.5 | --top_p 1.5: must be in \(0, 1\]
sonnets    | --num_beams 0 | --num_beams 0: must be at least 1
sonnets    | --temperature 0 | --temperature 0: must be greater than 0
sonnets    | --top_k -1 | --top_k -1: must be at least 0
sonnets    | --contrastive_alpha 2 | --contrastive_alpha 2: must be in \[0, 1\]
sonnets    | --contrastive_alpha_end 1.5 | --contrastive_alpha_end 1.5: must be in \[0, 1\]
sonnets    | --contrastive_penalty min | argument --contrastive_penalty: invalid choice: 'min'
sonnets    | --max_new_tokens 0 | --max_new_tokens 0: must be at least 1
sonnets    | --line_length 0 | --line_length 0: must be at least 1
sonnets    | --line_end_nudge -1 | --line_end_nudge -1: must be at least 0
sonnets    | --mbr_samples 0 | --mbr_samples 0: must be at least 1
sonnets    | --unlikelihood -1 | --unlikelihood -1: must be at least 0
sonnets    | --prefix_length -1 | --prefix_length -1: must be at least 0
sonnets    | --prefix_length 2 --lora | --prefix_length 2: cannot be combined with --lora
sonnets    | --prefix_length 2 --compile | --prefix_length 2: prefix-tuning trains through
sonnets    | --held_out_dev_path data/sonnets_held_out.txt | sonnet\(s\) 145, .* are not in --gold_dev_path
"""


def bad_flag_cases() -> list[tuple[str, list[str], str]]:
    rows = [line.split(" | ") for line in BAD_FLAGS.strip().splitlines()]
    return [(script.strip(), shlex.split(flags), message) for script, flags, message in rows]


@pytest.mark.parametrize("script, flags, message", bad_flag_cases())
def test_a_bad_flag_is_refused_in_one_line_before_any_model_or_run_directory(monkeypatch, capsys, tmp_path,
                                                                              checkpoint, script, flags, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the flags were checked")

    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    assert re.search(message, refusal(capsys, script, base_flags(script, checkpoint, tmp_path) + flags))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_numeric_flag_has_a_range_and_a_refusal_names_it(capsys, tmp_path, checkpoint, script):
    actions = [action for action in SCRIPTS[script].build_parser()._actions if action.type in (int, float)]
    assert len(actions) >= 19
    prog = SCRIPTS[script].build_parser().prog
    for action in actions:
        flag, value = action.option_strings[0], "nan" if action.type is float else "-1000000"
        message = refusal(capsys, script, base_flags(script, checkpoint, tmp_path) + [flag, value])
        assert message.startswith(f"{prog}: error: {flag} {value}: must be "), message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_lists_every_flag_with_its_default(capsys, script):
    with pytest.raises(SystemExit) as stopped:
        SCRIPTS[script].main(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert "--lr LR" in text and "--resume" in text and "--overwrite" in text
    assert "(default: 11711)" in text and "(default: None)" not in text


def test_a_k_shot_larger_than_the_training_file_is_refused_before_training(capsys, tmp_path, checkpoint):
    train = tmp_path / "train.csv"
    train.write_text("\tid\tsentence1\tsentence2\tis_duplicate\n0\ta\tQ1?\tQ2?\t1.0\n1\tb\tQ3?\tQ4?\t0.0\n")
    flags = base_flags("paraphrase", checkpoint, tmp_path) + ["--para_train", str(train), "--k_shot", "3"]
    assert "--k_shot 3: more than the 2 pairs of --para_train" in refusal(capsys, "paraphrase", flags)
    assert not (tmp_path / "run").exists()


def test_rerunning_a_finished_run_is_refused_and_leaves_it_byte_identical_until_overwrite(capsys, tmp_path,
                                                                                            checkpoint):
    flags = base_flags("classifier", checkpoint, tmp_path)
    classifier.main(flags)
    run_dir = tmp_path / "run/sst"
    before = file_hashes(tmp_path)
    assert {"settings.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt"} <= set(file_hashes(run_dir))

    message = refusal(capsys, "classifier", flags)
    assert message == (f"classifier.py: error: {run_dir} already holds a run (settings.json, metrics.jsonl, "
                       "curves.png, last.pt, best.pt): add --resume to continue it, or --overwrite to delete it and "
                       "start again, or pick another --run_dir")
    assert file_hashes(tmp_path) == before

    classifier.main(flags + ["--resume"])  # as advised: a finished run trains no more and predicts again
    after = file_hashes(tmp_path)
    assert {name for name in before if after[name] != before[name]} == {"run/sst/settings.json"}
    assert len(json.loads((run_dir / "settings.json").read_text())["resumed"]) == 1

    (run_dir / "epoch7.pt").write_bytes(b"an old epoch")
    (run_dir / "notes.txt").write_text("the user's own file")
    classifier.main(flags + ["--overwrite", "--epochs", "2"])
    assert [r["epoch"] for r in metrics(run_dir) if r["split"] == "dev"] == [0, 1]
    assert not (run_dir / "epoch7.pt").exists() and (run_dir / "notes.txt").read_text() == "the user's own file"
    assert json.loads((run_dir / "settings.json").read_text())["settings"]["train"]["epochs"] == 2


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:40], r"settings.json, line \d+: not JSON \(.*\); the run cannot be resumed: start it again"),
    (lambda text: "[]", r"settings.json: not a settings record of this code"),
    (lambda text: text.replace('"data": {', '"data": {"--x": 3, ', 1), r"settings.json: not a settings record"),
])
def test_a_damaged_settings_record_is_refused_naming_it_and_overwrite_starts_again(capsys, tmp_path, checkpoint,
                                                                                    damage, message):
    flags = base_flags("classifier", checkpoint, tmp_path)
    classifier.main(flags)
    record = tmp_path / "run/sst/settings.json"
    record.write_text(damage(record.read_text()))
    before = file_hashes(tmp_path)
    assert re.search(message, refusal(capsys, "classifier", flags + ["--resume", "--epochs", "2"]))
    assert file_hashes(tmp_path) == before
    classifier.main(flags + ["--overwrite"])
    assert json.loads(record.read_text())["task"] == "sentiment-sst"


def test_a_damaged_log_line_is_refused_before_any_file_changes_and_resumes_once_deleted(capsys, tmp_path,
                                                                                         checkpoint):
    flags = base_flags("classifier", checkpoint, tmp_path) + ["--log_every", "1"]
    classifier.main(flags)
    log = tmp_path / "run/sst/metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + '{"split": "train", "st\n' + "".join(lines[1:]))
    before = file_hashes(tmp_path)
    message = refusal(capsys, "classifier", flags + ["--resume", "--epochs", "2"])
    assert re.search(r"metrics.jsonl, line 2: not a JSON object \(.*\); mend or delete that line, then resume", message)
    assert file_hashes(tmp_path) == before  # settings.json too: nothing is written before the refusal
    log.write_text("".join(lines))
    classifier.main(flags + ["--resume", "--epochs", "2"])
    assert [r["epoch"] for r in metrics(tmp_path / "run/sst") if r["split"] == "dev"] == [0, 1]


def test_resume_in_an_empty_directory_starts_a_run_and_says_so(capsys, tmp_path, checkpoint):
    paraphrase_detection.main(base_flags("paraphrase", checkpoint, tmp_path) + ["--resume"])
    assert "holds no run yet: starting a new one there" in capsys.readouterr().out
    assert (tmp_path / "run/best.pt").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "4"], "--batch_size is 4 but .* was started with 8, and it decides the training trajectory"),
    (["--seed", "5"], "--seed is 5 but .* was started with 11711"),
    (["--train_limit", "24"], "--train_limit is 24 but .* was started with 16"),
    (["--grad_accum", "2"], "--grad_accum is 2 but .* was started with 1"),
    (["--lora"], "--lora is True but .* was started with False"),
    (["--pooling", "mean"], "--pooling is 'mean' but .* was started with 'last'"),
])
def test_a_mid_epoch_resume_that_changes_the_trajectory_is_refused_naming_the_flag(monkeypatch, capsys, tmp_path,
                                                                                   checkpoint, flags, message):
    flags_of_run = base_flags("classifier", checkpoint, tmp_path) + ["--epochs", "2"]
    calls, cross_entropy = [0], F.cross_entropy

    def sigterm_in_first_batch(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            signal.raise_signal(signal.SIGTERM)
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(classifier.F, "cross_entropy", sigterm_in_first_batch)
    with pytest.raises(SystemExit):
        classifier.main(flags_of_run)
    monkeypatch.undo()
    assert torch.load(tmp_path / "run/sst/last.pt", weights_only=True)["progress"]["batches_done"] == 1
    before = file_hashes(tmp_path / "run")
    assert re.search(message, refusal(capsys, "classifier", flags_of_run + ["--resume", *flags]))
    assert file_hashes(tmp_path / "run") == before


def test_a_resume_on_changed_training_data_is_refused(capsys, tmp_path, checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "dev", "test-student"):
        (data / f"ids-sst-{name}.csv").write_bytes(Path(f"data/ids-sst-{name}.csv").read_bytes())
    flags = base_flags("classifier", checkpoint, tmp_path) + ["--data_dir", str(data)]
    classifier.main(flags)
    with open(data / "ids-sst-train.csv", "a") as f:
        f.write("99999\tnew-row\tA new sentence .\t3\n")
    message = refusal(capsys, "classifier", flags + ["--resume", "--epochs", "2"])
    assert re.search(r"--data_dir \(train\) .*ids-sst-train.csv: its contents differ from .*, which .* was started "
                     "with; a resumed run trains on the same data", message)


def test_adjustable_settings_apply_from_the_resume_point_and_are_logged(capsys, tmp_path, checkpoint):
    flags = base_flags("sonnets", checkpoint, tmp_path)
    sonnet_generation.main(flags)
    sonnet_generation.main(flags + ["--resume", "--epochs", "2", "--lr", "5e-4", "--clip_norm", "1",
                                    "--decoding", "beam", "--num_beams", "2"])
    out = capsys.readouterr().out
    assert "from here on: --epochs 1 -> 2, --lr 0.001 -> 0.0005, --clip_norm 0.0 -> 1.0" in out
    records = metrics(tmp_path / "run")
    resume = next(r for r in records if r["split"] == "resume")
    assert resume["changed"] == {"--epochs": [1, 2], "--lr": [0.001, 0.0005], "--clip_norm": [0.0, 1.0]}
    assert [r["epoch"] for r in records if r["split"] == "dev"] == [0, 1]
    recorded = json.loads((tmp_path / "run/settings.json").read_text())
    assert recorded["settings"]["train"]["lr"] == 5e-4 and recorded["settings"]["decoding"]["num_beams"] == 2
    assert recorded["resumed"][0]["changed"]["--lr"] == [0.001, 0.0005] and "environment" in recorded["resumed"][0]
    state = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"] == [5e-4] * len(state["scheduler"]["base_lrs"])


def advised_flags(message: str) -> list[str]:
    """The flags that a stop message ends by saying to add."""
    return shlex.split(message.rsplit("add ", 1)[1])


def test_a_nan_in_the_first_epoch_advises_a_resume_that_starts_again_more_gently(capsys, tmp_path, checkpoint):
    flags = base_flags("classifier", checkpoint, tmp_path) + ["--epochs", "2", "--lr", "1e30"]  # diverges at once
    with pytest.raises(SystemExit) as stopped:
        classifier.main(flags)
    message = str(stopped.value.code)
    assert "training loss is nan at epoch 0, optimizer steps 1-2" in message and "No epoch has finished" in message
    assert advised_flags(message) == ["--resume", "--lr", "1e+29", "--clip_norm", "1.0"]
    assert not (tmp_path / "run/sst/last.pt").exists()

    with pytest.raises(SystemExit) as again:  # the advice is taken: the run starts again, at 1e29 still too fast
        classifier.main(flags + advised_flags(message))
    assert "training loss is nan at epoch 0, optimizer steps 1-2" in str(again.value.code)
    classifier.main(flags + ["--resume", "--lr", "1e-3"])
    assert [r["epoch"] for r in metrics(tmp_path / "run/sst") if r["split"] == "dev"] == [0, 1]
    assert len(read_predictions(tmp_path / "predictions/full-model-sst-test-out.csv")) == 2210


def test_a_nan_later_on_is_resumed_as_advised_at_the_lower_rate_and_trains_past_it(monkeypatch, tmp_path,
                                                                                   checkpoint):
    optimizers, schedulers = [], []
    make_optimizer, make_scheduler = loop.make_optimizer, loop.make_scheduler
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: optimizers.append(make_optimizer(*a, **k))
                        or optimizers[-1])
    monkeypatch.setattr(loop, "make_scheduler", lambda *a, **k: schedulers.append(make_scheduler(*a, **k))
                        or schedulers[-1])
    cross_entropy = F.cross_entropy

    def nan_from_step_3_at_a_high_rate(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        fast = optimizers[-1].param_groups[-1]["lr"] > 5e-4
        return loss * float("nan") if torch.is_grad_enabled() and schedulers[-1].last_epoch >= 3 and fast else loss

    monkeypatch.setattr(classifier.F, "cross_entropy", nan_from_step_3_at_a_high_rate)
    flags = base_flags("classifier", checkpoint, tmp_path) + ["--epochs", "3", "--log_every", "1"]
    with pytest.raises(SystemExit) as stopped:
        classifier.main(flags)
    message = str(stopped.value.code)
    assert "training loss is nan at epoch 1, optimizer step 4 (the loss is read every --log_every steps)" in message
    assert f"{tmp_path / 'run/sst/last.pt'} holds the last good state" in message
    assert advised_flags(message) == ["--resume", "--lr", "0.0001", "--clip_norm", "1.0"]

    classifier.main(flags + advised_flags(message))
    records = metrics(tmp_path / "run/sst")
    assert [r["epoch"] for r in records if r["split"] == "dev"] == [0, 1, 2]
    assert {r["lr"] for r in records if r["split"] == "train" and r["step"] > 2} == {1e-4}
    assert next(r for r in records if r["split"] == "resume")["changed"]["--lr"] == [0.001, 0.0001]


def test_a_nan_is_caught_at_most_log_every_steps_late_and_never_saved(monkeypatch, tmp_path, checkpoint):
    # The loss is read back every --log_every steps (a step needs no host-device sync), so a NaN in step 11
    # is found when step 12 is logged: named with its steps, and last.pt keeps the state of epoch 0.
    training_losses, cross_entropy = [0], F.cross_entropy

    def nan_in_step_11(*args, **kwargs):
        loss = cross_entropy(*args, **kwargs)
        if loss.requires_grad:  # a training batch, not the dev loss
            training_losses[0] += 1
            return loss * float("nan") if training_losses[0] >= 11 else loss
        return loss

    monkeypatch.setattr(classifier.F, "cross_entropy", nan_in_step_11)
    flags = base_flags("classifier", checkpoint, tmp_path) + ["--epochs", "2", "--train_limit", "32", "--batch_size",
                                                              "4", "--log_every", "3"]
    with pytest.raises(SystemExit) as stopped:
        classifier.main(flags)
    assert "the training loss is nan at epoch 1, optimizer steps 10-12" in str(stopped.value.code)
    assert training_losses[0] == 12  # found at the first read after it, no later
    last = torch.load(tmp_path / "run/sst/last.pt", weights_only=True)
    assert last["progress"]["epoch"] == 1 and last["progress"]["step"] == 8
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert max(r["step"] for r in metrics(tmp_path / "run/sst") if r["split"] == "train") == 9


def test_gold_dev_sonnets_without_a_prompt_are_refused_at_start_up(capsys, tmp_path, checkpoint):
    prompts = tmp_path / "held_out_dev.txt"
    prompts.write_text("Sonnets\n\n132\n\nThine eyes I love, and they, as pitying me,\nKnowing thy heart torment "
                       "me with disdain,\nHave put on black, and loving mourners be,\n")
    message = refusal(capsys, "sonnets", base_flags("sonnets", checkpoint, tmp_path)
                      + ["--held_out_dev_path", str(prompts)])
    assert ("--gold_dev_path data/TRUE_sonnets_held_out_dev.txt: sonnet(s) 133, 134, 135, 136, 137, 138, 139, 140, "
            "141, 142, 143 have no prompt in --held_out_dev_path") in message
    assert not (tmp_path / "run").exists()
