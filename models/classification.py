"""GPT-2 with a decision between classes: a new linear head on pooled hidden states, or the language-model
head's logits of one token per class (cloze). Sentiment classification and paraphrase detection both use it."""
import torch
from torch import nn

from models.gpt2 import GPT2Model
from modules.pooling import Pooler


class GPT2Classifier(nn.Module):
    """`num_labels` logits per example: from a linear head on the `pooling` of the hidden states, or, given
    `label_token_ids` (one per class), the next-token logits of those tokens after the last real token. Dropout
    comes before the decision; with `dropout_samples` > 1, training averages the logits of that many dropout
    masks (multi-sample dropout). The output also holds the pooled state and the hidden states, for the
    auxiliary losses of `training/objectives.py`."""

    def __init__(self, gpt: GPT2Model, num_labels: int, pooling: str = "last", head_dropout: float = 0.0,
                 dropout_samples: int = 1, label_token_ids: list[int] | None = None):
        super().__init__()
        self.gpt = gpt
        self.cloze = label_token_ids is not None
        if self.cloze:
            if len(label_token_ids) != num_labels:
                raise ValueError(f"{num_labels} classes need as many label tokens, not {len(label_token_ids)}")
            self.register_buffer("label_token_ids", torch.tensor(label_token_ids), persistent=False)
        else:
            self.pooler = Pooler(gpt.config.hidden_size, pooling)
            self.classifier = nn.Linear(gpt.config.hidden_size, num_labels)
        self.dropout = nn.Dropout(head_dropout)
        self.dropout_samples = dropout_samples

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                padding: str | None = None) -> dict[str, torch.Tensor]:
        out = self.gpt(input_ids, attention_mask, padding=padding)
        pooled = out["last_token"] if self.cloze else self.pooler(out["last_hidden_state"], attention_mask,
                                                                  out["last_token"])
        samples = self.dropout_samples if self.training else 1
        logits = torch.stack([self.decide(self.dropout(pooled)) for _ in range(samples)]).mean(0)
        return {"logits": logits, "pooled": pooled, "hidden": out["last_hidden_state"]}

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.gpt.token_logits(pooled, self.label_token_ids) if self.cloze else self.classifier(pooled)
