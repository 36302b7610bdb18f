"""The course starter's command lines run unchanged on our scripts, with the course's meaning; NumPy is seeded
with the rest, and --deterministic asks PyTorch for deterministic kernels."""
import io
import os
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import classifier
import paraphrase_detection
import sonnet_generation
from course.sonnets import read_sonnets
from training.checkpoints import rng_state, seed_everything, set_rng_state
from training.device import choose_device


def course_argv(command: str) -> list[str]:
    """The flags of a command as the course's handout writes it, `python script.py` dropped."""
    return shlex.split(command)[2:]


@pytest.mark.parametrize("command, lr, sst_batch", [
    ("python classifier.py --fine-tune-mode last-linear-layer --lr 1e-3 --use_gpu", 1e-3, 64),
    ("python classifier.py --fine-tune-mode full-model --lr 1e-5 --use_gpu", 1e-5, 64),
    ("python classifier.py --fine-tune-mode full-model --use_gpu --batch_size 32 --hidden_dropout_prob 0.1 "
     "--epochs 5 --seed 1234", 1e-5, 32),
])
def test_classifier_commands_mean_what_the_course_means(command, lr, sst_batch):
    settings = classifier.get_settings(course_argv(command))
    assert settings.task.dataset == "both" and settings.model.use_gpu
    sst, cfimdb = (classifier.dataset_settings(settings, dataset).train for dataset in ("sst", "cfimdb"))
    assert (sst.lr, sst.batch_size) == (lr, sst_batch)
    assert (cfimdb.lr, cfimdb.batch_size) == (lr, 8)  # the course keeps CFIMDB at 8 whatever --batch_size says
    if "--hidden_dropout_prob" in command:
        assert settings.task.head_dropout == 0.1  # the course's dropout before the head
        assert (settings.train.epochs, settings.train.seed) == (5, 1234)
    one = classifier.get_settings(course_argv(command) + ["--dataset", "cfimdb"])
    assert classifier.dataset_settings(one, "cfimdb").train.batch_size == (32 if "--batch_size" in command else 8)


def test_paraphrase_command_means_what_the_course_means():
    settings = paraphrase_detection.get_settings(course_argv(
        "python paraphrase_detection.py --use_gpu --para_train data/quora-train.csv --para_dev data/quora-dev.csv "
        "--para_test data/quora-test-student.csv --para_dev_out predictions/para-dev-output.csv "
        "--para_test_out predictions/para-test-output.csv --seed 11711 --epochs 10 --batch_size 8 --lr 1e-5 "
        "--model_size gpt2-medium"))
    task, train = settings.task, settings.train
    assert (task.para_train, task.para_dev, task.para_test) == (
        Path("data/quora-train.csv"), Path("data/quora-dev.csv"), Path("data/quora-test-student.csv"))
    assert (task.para_dev_out, task.para_test_out) == (
        Path("predictions/para-dev-output.csv"), Path("predictions/para-test-output.csv"))
    assert (train.seed, train.epochs, train.batch_size, train.lr) == (11711, 10, 8, 1e-5)
    assert settings.model.model_size == "gpt2-medium" and settings.model.use_gpu


def test_sonnet_commands_mean_what_the_course_means():
    test = sonnet_generation.get_settings(course_argv("python sonnet_generation.py --use_gpu"))
    assert (test.task.held_out_path, test.task.sonnet_out) == (
        Path("data/sonnets_held_out.txt"), Path("predictions/generated_sonnets.txt"))
    assert (test.decoding.temperature, test.decoding.top_p) == (1.2, 0.9)
    dev = sonnet_generation.get_settings(course_argv(
        "python sonnet_generation.py --use_gpu --held_out_sonnet_path data/sonnets_held_out_dev.txt "
        "--sonnet_out predictions/generated_sonnets_dev.txt --temperature 1.0 --top_p 0.8 --epochs 3"))
    assert (dev.task.held_out_path, dev.task.sonnet_out) == (
        Path("data/sonnets_held_out_dev.txt"), Path("predictions/generated_sonnets_dev.txt"))
    assert (dev.decoding.temperature, dev.decoding.top_p, dev.train.epochs) == (1.0, 0.8, 3)


def test_the_test_sonnets_never_replace_the_dev_sonnets(capsys):
    with pytest.raises(SystemExit) as stop:
        sonnet_generation.main(["--sonnet_out", "predictions/generated_sonnets_dev.txt"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "sonnet_generation.py: error: --sonnet_out predictions/generated_sonnets_dev.txt: is also --sonnet_dev_out, "
        "the completions of --held_out_dev_path data/sonnets_held_out_dev.txt; the completions of --held_out_path "
        "data/sonnets_held_out.txt need a file of their own\n")


def test_the_course_dev_command_writes_the_dev_sonnets_once(tmp_path, monkeypatch, long_context_checkpoint):
    written, write = [], sonnet_generation.write_sonnets
    monkeypatch.setattr(sonnet_generation, "write_sonnets", lambda path, sonnets: (written.append(path),
                                                                                 write(path, sonnets)))
    dev_out = tmp_path / "generated_sonnets_dev.txt"
    sonnet_generation.main(["--model_path", str(long_context_checkpoint), "--epochs", "0", "--max_new_tokens", "4",
                            "--held_out_sonnet_path", "data/sonnets_held_out_dev.txt", "--sonnet_out", str(dev_out),
                            "--sonnet_dev_out", str(dev_out)])
    assert written == [dev_out.resolve()]
    assert list(read_sonnets(dev_out)) == list(range(132, 144))


def test_numpy_is_seeded_and_its_state_resumes_from_a_checkpoint():
    seed_everything(5)
    first = (random.random(), np.random.rand(), torch.rand(()).item())
    seed_everything(5)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == first
    saved = io.BytesIO()
    torch.save(rng_state(), saved)
    expected = np.random.rand(4)
    saved.seek(0)
    set_rng_state(torch.load(saved, weights_only=True))
    assert np.array_equal(np.random.rand(4), expected)


def test_deterministic_asks_pytorch_for_deterministic_kernels(monkeypatch):
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"})
    settings = classifier.get_settings(["--deterministic"])
    assert settings.model.deterministic
    try:
        choose_device(False, "fp32", settings.model.deterministic)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's deterministic workspace
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
