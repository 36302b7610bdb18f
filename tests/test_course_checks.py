"""The course's own checks run unchanged against our code: its sanity check of the model (sanity_check.py, which
imports `utils` and loads our GPT-2 with the course's `from_pretrained(model=..., d=..., l=..., num_heads=...)`), its
optimizer test (optimizer_test.py) and its sonnet score. Each is played here by a script making the same calls,
written at test time; the references are computed at test time too (random weights laid out as the Hugging Face
cache, torch's AdamW), since neither the hub nor the course's saved values are at hand."""
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sacrebleu.metrics import CHRF

import evaluation
from course.sonnets import read_sonnets, write_sonnets
from flags import UserError
from models.gpt2 import GPT2Model
from tests.test_pretrained import SANITY_IDS, SANITY_MASK, cached_gpt2
from utils import model_size_to_params

ROOT = Path(__file__).resolve().parent.parent

# The calls of the course's sanity_check.py: transformers' GPT2Model and ours loaded by name from the Hugging Face
# cache (ours by the course's signature), the same right-padded batch through both, the last hidden states compared
# at the real tokens, and the state of each row's last real token (the course's pooled output).
COURSE_SANITY_CHECK = f"""
import torch
from transformers import GPT2Model as OpenAIGPT2Model

from models.gpt2 import GPT2Model
from utils import model_size_to_params

sent_ids = torch.tensor({SANITY_IDS})
att_mask = torch.tensor({SANITY_MASK})
openai_model = OpenAIGPT2Model.from_pretrained("gpt2")
gpt = GPT2Model.from_pretrained(model="gpt2", **model_size_to_params("gpt2"))
outputs = gpt(sent_ids, att_mask)
openai_outputs = openai_model(input_ids=sent_ids, attention_mask=att_mask, output_hidden_states=True).hidden_states[-1]
real = att_mask.unsqueeze(-1)
assert torch.allclose(outputs["last_hidden_state"] * real, openai_outputs * real, atol=1e-1, rtol=1e-2)
last = openai_outputs[torch.arange(2), att_mask.sum(-1) - 1]
assert torch.allclose(outputs["last_token"], last, atol=1e-1, rtol=1e-2)
print("Your GPT2 implementation is correct!")
"""

# The calls of the course's optimizer_test.py: a small linear model trained 1,000 steps by our AdamW, its weights
# compared with the saved optimizer_test.npy. In two parts, so that the reference is trained by the same calls.
COURSE_OPTIMIZER_TRAINING = """
import numpy as np
import torch

def trained_weight(optimizer_class):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    optimizer = optimizer_class(model.parameters(), lr=1e-3, weight_decay=1e-4, correct_bias=True)
    for _ in range(1000):
        optimizer.zero_grad()
        x = torch.FloatTensor(rng.uniform(size=[model.in_features]))
        loss = ((torch.Tensor([x[0] + x[1], -x[2]]) - model(x)) ** 2).sum()
        loss.backward()
        optimizer.step()
    return model.weight.detach()
"""
COURSE_OPTIMIZER_CHECK = """
from optimizer import AdamW

assert torch.allclose(torch.tensor(np.load("optimizer_test.npy")), trained_weight(AdamW))
print("Optimizer test passed!")
"""
COURSE_EPS = 1e-6  # the course's AdamW default, which its test leaves as it is


class CourseAdamWOnTorch(torch.optim.AdamW):
    """The course's AdamW built on torch's: torch's Adam update (its plain per-tensor loop), with eps moved onto
    the uncorrected sqrt(v) where the course adds it, then the course's decoupled decay of the updated weights.
    torch's own decay, before the update and by a factor rounded to float32 (1 - 1e-7 becomes 1 - 1.19e-7), drifts
    1.8e-5 from the course's definition over the test's 1,000 steps, past its tolerance."""

    def __init__(self, params, lr: float, weight_decay: float, correct_bias: bool):
        assert correct_bias
        super().__init__(params, lr=lr, eps=COURSE_EPS, weight_decay=0.0, foreach=False)
        self.decay = weight_decay

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            step = float(self.state[group["params"][0]].get("step", 0)) + 1
            group["eps"] = COURSE_EPS / math.sqrt(1 - group["betas"][1] ** step)
        super().step()
        for group in self.param_groups:
            for param in group["params"]:
                param.add_(param, alpha=-group["lr"] * self.decay)


def as_hub_cache(cache: Path, repo: str, checkpoint: Path) -> Path:
    """`cache` laid out as the Hugging Face hub cache holding `checkpoint`'s config.json and model.safetensors as
    the latest snapshot of `repo`: refs/main names a commit, whose snapshot folder links to the files."""
    commit = "0" * 40
    model = cache / f"models--{repo}"
    (model / "refs").mkdir(parents=True)
    (model / "refs" / "main").write_text(commit)
    snapshot = model / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(checkpoint / name)
    return cache


def run_script(script: Path, **environment: str) -> subprocess.CompletedProcess:
    """`python script` from the project's root, as the course runs its checks, offline."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **environment}
    return subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


# -----------------------------------------------------------------------------
# the sanity check

def test_the_course_sanity_check_passes_on_gpt2_in_the_hub_cache_offline(gpt2_124m_checkpoint, tmp_path):
    """Random 124M weights stand in for the published ones, as the cache would hold them."""
    cache = as_hub_cache(tmp_path / "hub", "gpt2", gpt2_124m_checkpoint[0])
    script = tmp_path / "sanity_check.py"
    script.write_text(COURSE_SANITY_CHECK)
    result = run_script(script, HF_HUB_CACHE=str(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Your GPT2 implementation is correct!\n"


@pytest.mark.pretrained
def test_the_course_sanity_check_passes_on_the_published_gpt2_in_the_cache(tmp_path):
    if cached_gpt2() is None:
        pytest.skip("the published gpt2 weights are not in the Hugging Face cache")
    script = tmp_path / "sanity_check.py"
    script.write_text(COURSE_SANITY_CHECK)
    result = run_script(script)
    assert result.returncode == 0, result.stderr


def test_model_size_to_params_gives_the_course_sizes():
    assert model_size_to_params("gpt2") == {"d": 768, "l": 12, "num_heads": 12}
    assert model_size_to_params("gpt2-medium") == {"d": 1024, "l": 24, "num_heads": 16}
    assert model_size_to_params("gpt2-large") == {"d": 1280, "l": 36, "num_heads": 20}
    with pytest.raises(UserError, match="model size 'gpt2-huge' is not supported; the sizes are gpt2, gpt2-medium"):
        model_size_to_params("gpt2-huge")


def test_the_course_signature_loads_a_checkpoint_of_the_sizes_it_names(tiny_checkpoint):
    model = GPT2Model.from_pretrained(model=tiny_checkpoint[0], d=64, l=2, num_heads=4)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (64, 2, 4)


def test_the_course_signature_refuses_sizes_the_checkpoint_does_not_have(tiny_checkpoint):
    directory = tiny_checkpoint[0]
    with pytest.raises(UserError) as refused:
        GPT2Model.from_pretrained(model=directory, **model_size_to_params("gpt2"))
    assert str(refused.value) == (
        f"{directory / 'config.json'} describes a GPT-2 with d=64, l=2, num_heads=4, not d=768, l=12, num_heads=12: "
        "the sizes come from the checkpoint, so pass its own (utils.model_size_to_params(size)) or none")
    with pytest.raises(UserError, match=r"not l=3:"):
        GPT2Model.from_pretrained(directory, l=3)


def test_a_checkpoint_named_twice_is_refused(tiny_checkpoint):
    with pytest.raises(TypeError, match="give the checkpoint once"):
        GPT2Model.from_pretrained(tiny_checkpoint[0], model=tiny_checkpoint[0])


# -----------------------------------------------------------------------------
# the optimizer test

def test_the_course_optimizer_test_passes_against_a_reference_from_torchs_adamw(tmp_path, monkeypatch):
    course = {}
    exec(COURSE_OPTIMIZER_TRAINING, course)
    np.save(tmp_path / "optimizer_test.npy", course["trained_weight"](CourseAdamWOnTorch).numpy())
    script = tmp_path / "optimizer_test.py"
    script.write_text(COURSE_OPTIMIZER_TRAINING + COURSE_OPTIMIZER_CHECK)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script))


# -----------------------------------------------------------------------------
# the sonnet score

def course_sonnet_score(generated_path: Path, gold_path: Path) -> float:
    """The course's score: each file split at its number lines, the header before the first dropped and each sonnet
    stripped; chrF of the generated sonnets against the true ones, paired in order."""
    def sonnets(path: Path) -> list[str]:
        return [text.strip() for text in re.split(r"\n\s*\d+\s*\n", path.read_text(encoding="utf-8"))[1:]]

    generated, true = sonnets(generated_path), sonnets(gold_path)
    count = min(len(generated), len(true))
    return CHRF().corpus_score(generated[:count], [true[:count]]).score


def test_the_course_sonnet_score_of_our_sonnet_file_equals_evaluation_sonnets(tmp_path):
    """Our generated-sonnets file, scored the course's way against the TRUE dev sonnets, gets the chrF that
    `evaluation.py sonnets` reports (`evaluation.grade_sonnets`)."""
    gold_path = ROOT / "data" / "TRUE_sonnets_held_out_dev.txt"
    gold = read_sonnets(gold_path)
    numbers = list(gold)
    # each sonnet's first 3 lines, then lines of the next one: a completion that is partly right
    completions = {number: gold[number][:3] + gold[numbers[(k + 1) % len(numbers)]][3:10]
                   for k, number in enumerate(numbers)}
    generated_path = tmp_path / "generated_sonnets_dev.txt"
    write_sonnets(generated_path, completions)
    ours = evaluation.grade_sonnets(generated_path, gold_path)["chrf"]
    assert 20 < ours < 80
    assert ours == pytest.approx(course_sonnet_score(generated_path, gold_path), abs=1e-9)
