"""The classification objective of classifier.py and paraphrase_detection.py, one set of flags for both:
cross-entropy with label smoothing, multi-sample dropout, R-Drop, a SimCSE-style contrastive loss and GPT-1's
auxiliary language-model loss; and whether the text is prepared as the course's code prepares it."""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datasets import BATCH_PADDING
from flags import require, require_range, setting
from models.classification import GPT2Classifier
from modules.losses import info_nce, language_model_loss, symmetric_kl


@dataclass(frozen=True)
class ClassificationObjective:
    """The loss, and how the text is prepared: the fields of both classifying scripts' task settings (each
    script's record keeps them there)."""
    head_dropout: float = setting(0.0, "dropout before the decision")
    dropout_samples: int = setting(1, "multi-sample dropout: masks per step")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    rdrop: float = setting(0.0, "R-Drop: weight of the symmetric KL between two dropout passes")
    contrastive: float = setting(0.0, "weight of a SimCSE-style loss: two dropout passes of an example are "
                                      "positives, the batch's other examples negatives")
    contrastive_temperature: float = setting(0.05, "temperature of the contrastive loss")
    lm_loss: float = setting(0.0, "GPT-1's auxiliary language-model loss on the input, with this weight")
    course_preprocessing: bool = setting(False, "prepare the text as the course's code does: lowercased, and Quora's "
                                                "questions with . ? , ' split from their words. Off, the text is "
                                                "as written, which suits GPT-2: it was trained on cased text, "
                                                "where lowercased words often split into more, rarer tokens")

    def __post_init__(self) -> None:
        require_range(self, "head_dropout", 0, 1, high_open=True)
        require_range(self, "dropout_samples", 1)
        require(self, "dropout_samples", self.dropout_samples == 1 or self.head_dropout > 0,
                "needs --head_dropout > 0: the samples differ only by dropout")
        require_range(self, "label_smoothing", 0, 1, high_open=True)
        for name in ("rdrop", "contrastive", "lm_loss"):
            require_range(self, name, 0, note="0 turns it off")
        require_range(self, "contrastive_temperature", 0, low_open=True)


def classification_loss(model: GPT2Classifier, batch: dict[str, torch.Tensor], objective: ClassificationObjective,
                        combine: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits) -> torch.Tensor:
    """Cross-entropy on the decision, plus whichever auxiliary losses `objective` turns on. `combine` turns
    the model's logits into one row per label (paraphrase detection's symmetric input averages two orders)."""
    first = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
    logits = combine(first["logits"])
    loss = F.cross_entropy(logits, batch["labels"], label_smoothing=objective.label_smoothing)
    if objective.rdrop or objective.contrastive:
        second = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)
        if objective.rdrop:
            other = combine(second["logits"])
            loss = (loss + F.cross_entropy(other, batch["labels"], label_smoothing=objective.label_smoothing)) / 2
            loss = loss + objective.rdrop * symmetric_kl(logits, other)
        if objective.contrastive:
            loss = loss + objective.contrastive * info_nce(first["pooled"], second["pooled"],
                                                           objective.contrastive_temperature)
    if objective.lm_loss:
        token_logits = model.gpt.hidden_state_to_token(first["hidden"])
        loss = loss + objective.lm_loss * language_model_loss(token_logits, batch["input_ids"], batch["attention_mask"])
    return loss
