"""sonnet_generation.py end to end with a tiny random checkpoint and the real tokenizer."""
from pathlib import Path

import evaluation
import sonnet_generation
from course.sonnets import SONNET_HEADER, read_sonnets

DATA = Path("data")


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
    report = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dev: "))
    assert metrics["count"] == 12 and f"chrf {metrics['chrf']:.4f}" in report  # the score of the file it wrote
    assert (tmp_path / "run/best.pt").is_file() and (tmp_path / "run/curves.png").is_file()
