"""sonnet_generation.py end to end with a tiny random checkpoint and the real tokenizer."""
import json
import shlex
import subprocess
from pathlib import Path

import evaluation
import sonnet_generation
from course.sonnets import SONNET_HEADER, read_sonnets

DATA = Path("data")
GOLD_DEV = DATA / "TRUE_sonnets_held_out_dev.txt"


def short_run(tmp_path: Path, checkpoint: Path, *flags: str) -> list[str]:
    """A short run writing its sonnets to `tmp_path`; its flags, so that a test can run it again."""
    common = ["--model_path", str(checkpoint), "--lr", "1e-3", "--train_limit", "8", "--batch_size", "8",
              "--max_new_tokens", "4", "--run_dir", str(tmp_path / "run"), "--sonnet_dev_out",
              str(tmp_path / "dev.txt"), "--sonnet_out", str(tmp_path / "test.txt")]
    sonnet_generation.main([*common, *flags])
    return common


def test_run_writes_sonnets_that_parse_back_with_their_prompts(tmp_path, long_context_checkpoint, capsys):
    dev_out, test_out = tmp_path / "generated_sonnets_dev.txt", tmp_path / "generated_sonnets.txt"
    sonnet_generation.main([
        "--model_path", str(long_context_checkpoint), "--epochs", "1", "--lr", "1e-3",
        "--train_limit", "8", "--batch_size", "8", "--decoding", "pool", "--mbr_samples", "2", "--max_new_tokens", "12",
        "--prefix_length", "2", "--unlikelihood", "0.5", "--keep_best", "1", "--run_dir", str(tmp_path / "run"),
        "--sonnet_dev_out", str(dev_out), "--sonnet_out", str(test_out)])
    for generated, prompts in ((dev_out, DATA / "sonnets_held_out_dev.txt"), (test_out, DATA / "sonnets_held_out.txt")):
        written, given = read_sonnets(generated), read_sonnets(prompts)
        assert list(written) == list(given)
        assert all(written[n][:len(given[n])] == given[n] and len(written[n]) <= 14 for n in given)
    assert open(dev_out).readline().strip() == SONNET_HEADER
    metrics = evaluation.grade_sonnets(dev_out, DATA / "TRUE_sonnets_held_out_dev.txt")
    report = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dev chrf"))
    assert metrics["count"] == 12 and f"chrf {metrics['chrf']:.4f}" in report  # the score of the file it wrote
    assert (tmp_path / "run/best.pt").is_file() and (tmp_path / "run/curves.png").is_file()


def test_resumed_run_with_another_decoding_labels_each_chrf_with_its_decoding(tmp_path, long_context_checkpoint,
                                                                              capsys):
    common = short_run(tmp_path, long_context_checkpoint, "--epochs", "1")
    capsys.readouterr()
    sonnet_generation.main([*common, "--epochs", "1", "--resume", "--decoding", "greedy"])
    output = capsys.readouterr().out
    best = json.loads((tmp_path / "run/settings.json").read_text())["result"]["best_metrics"]["chrf"]
    assert (f"best epoch 0 of 1 trained: dev chrf {best:.4f}" in output
            and "(decoding: sample --max_new_tokens 4, when that epoch was scored)" in output)
    now = evaluation.grade_sonnets(tmp_path / "dev.txt", GOLD_DEV)["chrf"]  # the file this run wrote, greedily
    report = next(line for line in output.splitlines() if line.startswith("dev chrf"))
    assert report.startswith(f"dev chrf {now:.4f}, ") and report.endswith("(this run's decoding: greedy "
                                                                          "--max_new_tokens 4)")


def test_each_decoding_pass_shows_a_bar_and_dev_is_not_decoded_again_after_training(tmp_path, long_context_checkpoint,
                                                                                  monkeypatch):
    bars = []
    bar = sonnet_generation.tqdm

    def recorded(items, desc, **options):
        bars.append(desc)
        return bar(items, desc=desc, **options)

    monkeypatch.setattr(sonnet_generation, "tqdm", recorded)
    short_run(tmp_path, long_context_checkpoint, "--epochs", "2", "--decoding", "mbr", "--mbr_samples", "2")
    shown = "(mbr --mbr_samples 2 --max_new_tokens 4)"
    assert bars == [f"dev sonnets {shown}"] * 2 + [f"test sonnets {shown}"]  # one each epoch, then the test set


def test_summary_command_scores_the_dev_sonnets_as_printed(tmp_path, long_context_checkpoint, capsys):
    short_run(tmp_path, long_context_checkpoint, "--epochs", "0")
    output = capsys.readouterr().out
    summary = output[output.index("\nnext:\n"):].splitlines()[2:]
    command = shlex.split(summary[0])
    assert command[1:] == ["evaluation.py", "sonnets", str(tmp_path / "dev.txt"), str(GOLD_DEV)]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    chrf = evaluation.grade_sonnets(tmp_path / "dev.txt", GOLD_DEV)["chrf"]
    assert ran.returncode == 0 and f"{chrf:.4f}" in ran.stdout, ran.stderr
