"""The classification objectives are one implementation with one set of flags: the same flags give the same
loss in classifier.py and paraphrase_detection.py on the same batch, and each option changes the loss."""
import pytest
import torch

import classifier
import paraphrase_detection
from course.files import read_sentiment
from datasets import tokenize_sentiment
from models.tokenizer import load_tokenizer
from modules.losses import language_model_loss
from training.objectives import classification_loss

pytestmark = pytest.mark.filterwarnings("ignore:cfimdb.*cut at the end")  # long reviews, a short context

OPTIONS = [["--label_smoothing", "0.1"], ["--rdrop", "1.0"], ["--contrastive", "0.5"], ["--lm_loss", "0.5"],
           ["--dropout_samples", "4"]]


def cfimdb_batch(count: int = 6) -> dict[str, torch.Tensor]:
    examples = read_sentiment("data/ids-cfimdb-train.csv", 2)[:count]
    return tokenize_sentiment(examples, load_tokenizer(), "{sentence}", 96, "cfimdb").batches(count, shuffle=False)[0]


def classifier_loss(checkpoint, flags: list[str], batch) -> float:
    settings = classifier.get_settings(["--model_path", str(checkpoint), "--dataset", "cfimdb", "--fine-tune-mode",
                                        "full-model", "--head_dropout", "0.2", *flags])
    torch.manual_seed(0)
    model = classifier.build_model(settings, "cfimdb", None).train()
    torch.manual_seed(1)
    return classification_loss(model, batch, settings.task).item()


@pytest.mark.parametrize("flags", [[], *OPTIONS], ids=lambda flags: " ".join(flags) or "plain")
def test_the_same_flags_give_the_same_loss_in_both_scripts(tiny_checkpoint, flags):
    batch = cfimdb_batch()
    settings = paraphrase_detection.get_settings(["--model_path", str(tiny_checkpoint[0]), "--head", "last",
                                                  "--head_dropout", "0.2", *flags])
    torch.manual_seed(0)
    model = paraphrase_detection.build_model(settings).train()  # two classes, a linear head on the last token
    torch.manual_seed(1)
    paraphrase = paraphrase_detection.paraphrase_loss(model, batch, settings.task).item()
    assert classifier_loss(tiny_checkpoint[0], flags, batch) == pytest.approx(paraphrase, rel=1e-6)


@pytest.mark.parametrize("flags", OPTIONS, ids=lambda flags: " ".join(flags))
def test_each_option_changes_the_sentiment_loss_and_keeps_it_finite(tiny_checkpoint, flags):
    batch = cfimdb_batch()
    base, changed = (classifier_loss(tiny_checkpoint[0], options, batch) for options in ([], flags))
    assert torch.isfinite(torch.tensor(changed)) and changed != base


def test_the_auxiliary_language_model_loss_is_over_the_sentence(tiny_checkpoint):
    batch = cfimdb_batch()
    settings = classifier.get_settings(["--model_path", str(tiny_checkpoint[0]), "--dataset", "cfimdb",
                                        "--fine-tune-mode", "full-model", "--head_dropout", "0", "--lm_loss", "0.5"])
    model = classifier.build_model(settings, "cfimdb", None).eval()  # no dropout: the two terms separate exactly
    with torch.no_grad():
        plain = classification_loss(model, batch, classifier.get_settings(
            ["--dataset", "cfimdb", "--head_dropout", "0"]).task)
        with_lm = classification_loss(model, batch, settings.task)
        hidden = model.gpt(batch["input_ids"], batch["attention_mask"])["last_hidden_state"]
        sentence = language_model_loss(model.gpt.hidden_state_to_token(hidden), batch["input_ids"],
                                       batch["attention_mask"])
    torch.testing.assert_close(with_lm - plain, 0.5 * sentence)
