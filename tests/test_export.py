"""export.py: a finished run's best model as a checkpoint directory that transformers loads with no missing or
unexpected weights and that computes our logits and greedy decoding to float32 precision (a linear head's bias
folded into the final LayerNorm), that our scripts read back to the run's own predictions, and with a model card;
what transformers cannot compute exactly (another head, prefix-tuning) and any OUT_DIR that would replace files
are refused in one line. The runs are conftest's `finished_runs`, trained once per session."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

import classifier
import export
import paraphrase_detection as para
import predict
import sonnet_generation
from datasets import pad_to_longest
from models import hf_checkpoint
from models.decoding import DecodingConfig, generate
from models.gpt2 import GPT2Model
from models.tokenizer import load_tokenizer
from predict import best_model, finished_run
from tests.conftest import paraphrase_files, sonnet_files, tiny_gpt2
from training.settings import ModelSettings

TEXTS = ["Is this the same question?", "A short one", "Shall I compare thee to a summer's day?"]


@pytest.fixture
def runs(finished_runs: dict[str, Path]) -> dict[str, Path]:
    """conftest's `finished_runs`, by a short name."""
    return finished_runs


@pytest.fixture(scope="module")
def exports(finished_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each finished run exported: the paraphrase and sonnet runs as language models, the sentiment run as a
    sequence classifier."""
    root = tmp_path_factory.mktemp("exports")
    (root / "sonnets").mkdir()  # an empty OUT_DIR holds nothing to replace: the export takes its place
    for name, run in finished_runs.items():
        export.main([str(run), str(root / name)])
    return {name: root / name for name in finished_runs}


def ours(run: Path) -> torch.nn.Module:
    """The run's model as predict.py rebuilds it."""
    return best_model(finished_run(run, ModelSettings()), load_tokenizer(), torch.device("cpu"))[0]


def right_padded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_to_longest([load_tokenizer().encode(text) for text in texts], pad_id=50256)


def refusal(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one line a refused export prints; it must exit with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        export.main(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("export.py: error: ") and "\n" not in message and "Traceback" not in message
    return message.removeprefix("export.py: error: ")


def no_model(*args, **kwargs):
    raise AssertionError("a model was built before the export was checked")


def edited_run(run: Path, folder: Path, group: str, **values) -> Path:
    """A copy of `run` whose settings.json records other `values` in settings group `group`."""
    shutil.copytree(run, folder)
    record = json.loads((folder / "settings.json").read_text())
    record["settings"][group].update(values)
    (folder / "settings.json").write_text(json.dumps(record))
    return folder


def test_our_weights_go_to_transformers_names_and_read_back_unchanged():
    gpt = tiny_gpt2(intermediate_size=96)
    back = hf_checkpoint.to_our_names(hf_checkpoint.to_hf_names(gpt.state_dict(), gpt.config), gpt.config, "ours")
    assert back.keys() == gpt.state_dict().keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in gpt.state_dict().items())
    assert export.hf_config(gpt.config, export.LM_HEAD).n_inner == 96


def test_a_cloze_run_exports_as_a_language_model_with_our_logits_and_greedy_decoding(runs, exports):
    theirs, info = GPT2LMHeadModel.from_pretrained(exports["paraphrase"], output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set() and not info["mismatched_keys"]
    gpt = ours(runs["paraphrase"]).gpt  # its DoRA adapters merged
    input_ids, mask = right_padded(TEXTS)
    with torch.no_grad():
        expected = gpt.hidden_state_to_token(gpt(input_ids, mask, padding="right")["last_hidden_state"])
        logits = theirs.eval()(input_ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=1e-5)
    for text in TEXTS:
        prompt = torch.tensor([load_tokenizer().encode(text)])
        mine = generate(gpt, prompt, None, DecodingConfig(strategy="greedy", max_new_tokens=12))[0]
        generated = theirs.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.size(1):].tolist()
        assert generated[:len(mine) + 1] == mine + ([50256] if len(mine) < 12 else [])
    tokenizer = AutoTokenizer.from_pretrained(exports["paraphrase"])
    assert tokenizer(TEXTS[0])["input_ids"] == load_tokenizer().encode(TEXTS[0])


def test_the_model_card_names_the_task_base_model_strategy_prompt_and_dev_metrics(runs, exports,
                                                                                long_context_checkpoint):
    card = (exports["paraphrase"] / "README.md").read_text()
    result = json.loads((runs["paraphrase"] / "settings.json").read_text())["result"]
    assert "# Paraphrase detection, Quora question pairs" in card and "pipeline_tag: text-generation" in card
    assert f"| base model | the checkpoint in `{long_context_checkpoint}`, pre-trained |" in card
    assert "| what trained | DoRA (rank 2, alpha 16, on query,value), merged into the weights |" in card
    assert all(f"| {name} | {value:.4f} |" in card for name, value in result["best_metrics"].items())
    prompt = card.split("```text\n")[1].split("\n```")[0]
    assert prompt.count("Answer \"yes\" or \"no\": ") == 3  # two answered demonstrations, then the pair's question
    assert prompt.endswith('Is "{s1}" a paraphrase of "{s2}"? Answer "yes" or "no": ') and "'yes' (token 8505)" in card
    assert "both orders of a pair" in card and '"lora_rank": 2' in card  # --symmetric; the recorded settings
    sentiment = (exports["sentiment"] / "README.md").read_text()
    assert "```text\nReview: {sentence} Sentiment:\n```" in sentiment


def test_our_scripts_read_the_export_back_and_write_the_runs_predictions(course_rows, runs, exports, tmp_path):
    # The run's prompt flags again, not its strategy: the export holds the DoRA adapters merged.
    para.main(["--model_path", str(exports["paraphrase"]), "--epochs", "0", "--k_shot", "2", "--symmetric",
               *paraphrase_files(course_rows, tmp_path)])
    assert (tmp_path / "dev.csv").read_bytes() == (runs["paraphrase"].parent / "predictions/dev.csv").read_bytes()
    assert json.loads((exports["sonnets"] / "config.json").read_text())["n_layer"] == 1  # --keep_layers 1
    sonnet_generation.main(["--model_path", str(exports["sonnets"]), "--epochs", "0", "--max_new_tokens", "8",
                            *sonnet_files(tmp_path)])
    assert (tmp_path / "dev.txt").read_bytes() == (runs["sonnets"].parent / "predictions/dev.txt").read_bytes()


def test_a_last_token_head_with_a_bias_exports_as_a_sequence_classifier_with_our_logits(runs, exports):
    head_bias = torch.load(runs["sentiment"] / "best.pt", weights_only=True)["model"]["classifier.bias"]
    assert head_bias.count_nonzero() == 5  # a trained head's bias, which the export must carry
    theirs, info = GPT2ForSequenceClassification.from_pretrained(exports["sentiment"], output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set() and not info["mismatched_keys"]
    assert theirs.config.id2label == {i: str(i) for i in range(5)}
    input_ids, mask = right_padded(TEXTS)
    with torch.no_grad():
        expected = ours(runs["sentiment"])(input_ids, mask)["logits"]
        logits = theirs.eval()(input_ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert "pipeline_tag: text-classification" in (exports["sentiment"] / "README.md").read_text()


def test_a_sequence_classifier_export_starts_a_run_as_its_gpt2_with_a_new_head(course_rows, runs, exports, tmp_path,
                                                                              capsys):
    with pytest.warns(UserWarning, match="its head .score.weight, 5 classes. is not, so a head starts anew"):
        read = GPT2Model.from_pretrained(exports["sentiment"]).state_dict()
    run = ours(runs["sentiment"])
    trained = run.gpt.state_dict()
    assert all(torch.equal(read[name], tensor) for name, tensor in trained.items() if name != "final_layer_norm.bias")
    shift = (read["final_layer_norm.bias"] - trained["final_layer_norm.bias"]).double()
    torch.testing.assert_close(run.classifier.weight.double() @ shift, run.classifier.bias.double(), atol=1e-6,
                               rtol=1e-5)  # the head's bias, folded in
    capsys.readouterr()
    classifier.main(["--model_path", str(exports["sentiment"]), "--epochs", "0", "--dataset", "sst",
                     "--data_dir", str(course_rows), "--predictions_dir", str(tmp_path)])
    assert "classifier.py: warning: " in capsys.readouterr().err
    assert (tmp_path / "last-linear-layer-sst-dev-out.csv").is_file()


def test_a_head_bias_no_layer_norm_shift_gives_is_refused_and_predict_py_still_predicts(runs, tmp_path, capsys):
    degenerate = tmp_path / "degenerate"
    shutil.copytree(runs["sentiment"], degenerate)
    best = torch.load(degenerate / "best.pt", weights_only=True)
    weight = best["model"]["classifier.weight"]
    weight[1:] = weight[0]  # every class reads the same direction, yet their biases differ
    torch.save(best, degenerate / "best.pt")
    message = refusal(capsys, [str(degenerate), str(tmp_path / "out")])
    assert message.startswith(f"{degenerate}: its head adds a bias to each class's logit") and "rank 1" in message
    assert not (tmp_path / "out").exists()
    advised = message.split("`")[1].split()  # `python predict.py RUN_DIR`
    assert advised[:2] == ["python", "predict.py"]
    (tmp_path / "sentences.txt").write_text("A fine film.\nDull.\n")
    capsys.readouterr()
    predict.main([*advised[2:], "--input", str(tmp_path / "sentences.txt")])
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("name, group, values, message", [
    ("sentiment", "task", {"pooling": "mean"}, "its head reads mean pooling of the hidden states, and "
                                               "GPT2ForSequenceClassification reads the last token's alone"),
    ("paraphrase", "task", {"head": "attention"}, "its head reads attention pooling"),
    ("sonnets", "strategy", {"prefix_length": 2}, "its prefix-tuning (2 trained key/value positions per layer) "
                                                  "cannot be merged into GPT-2's weights"),
])
def test_what_transformers_cannot_compute_is_refused_before_any_model(runs, tmp_path, monkeypatch, capsys, name,
                                                                      group, values, message):
    run = edited_run(runs[name], tmp_path / "run", group, **values)
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    assert refusal(capsys, [str(run), str(tmp_path / "out")]).startswith(f"{run}: {message}")
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_would_replace_files_or_an_unfinished_run_is_refused(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(GPT2Model, "__init__", no_model)
    run = runs["sonnets"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    assert refusal(capsys, [str(run), str(tmp_path / "taken")]) == (
        f"OUT_DIR {tmp_path / 'taken'}: holds notes.txt: give a new or empty directory, so that nothing is replaced")
    assert refusal(capsys, [str(run), str(tmp_path / "file")]) == (
        f"OUT_DIR {tmp_path / 'file'}: is a file; give a new directory")
    assert refusal(capsys, [str(run), str(run / "export")]).startswith(
        f"OUT_DIR {run / 'export'}: is inside the run directory {run}")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "best.pt").unlink()
    assert refusal(capsys, [str(unfinished), str(tmp_path / "out")]).startswith(
        f"RUN_DIR {unfinished}: holds no best.pt")
    assert (tmp_path / "taken/notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()
