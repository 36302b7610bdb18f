"""Prompts, tokenising and batching for the course's tasks. Each dataset is tokenised once; the files
themselves are read by `course.files`, whose examples these functions take as they are (`Sentence`,
`SentencePair`), without importing it: the model's side of the project does not reach up into the course's."""
import random
import string
import warnings
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from config import END_OF_TEXT_ID
from flags import UserError

Item = TypeVar("Item")


class Sentence(Protocol):
    """A sentiment example (`course.files.SentimentExample`)."""
    id: str
    sentence: str
    label: int | None


class SentencePair(Protocol):
    """A paraphrase example (`course.files.ParaphraseExample`)."""
    id: str
    sentence1: str
    sentence2: str
    label: int | None

# Every batch built here (`pad_to_longest`, `TokenizedDataset.batches`, `EpochBatches`) is right-padded: pass
# this as GPT2Model's `padding`, so the model need not read the mask on the device to find out.
BATCH_PADDING = "right"


def seeded_sample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """`limit` of `items` drawn with `seed` (the course files are not shuffled), or all of them when limit is 0."""
    return random.Random(seed).sample(items, min(limit, len(items))) if limit else items


def sonnet_text(lines: list[str]) -> str:
    """How a sonnet (or a prompt of its first lines) is written for the model: one line each."""
    return "".join(line + "\n" for line in lines)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, template: str, fields: dict[str, str],
                  max_len: int) -> tuple[list[int], bool]:
    """Token ids of `template` with its `{field}`s filled in, and whether a field was cut to fit. When the
    whole is longer than `max_len`, the longest field loses tokens from its end, so the template's own
    words (a question, an answer cue) always survive."""
    pieces: list[tuple[str | None, list[int]]] = []  # (field name, or None for template text; token ids)
    for literal, name, _, _ in string.Formatter().parse(template):
        lead = ""
        if name is not None:
            # GPT-2's BPE attaches a space to the word after it ("Review: great" is "Review", ":", " great"),
            # so the space before a field is encoded with the field.
            lead = literal[len(literal.rstrip(" ")):]
            literal = literal.rstrip(" ")
        if literal:
            pieces.append((None, tokenizer.encode(literal)))
        if name is not None:
            if name not in fields:
                raise ValueError(f"template {template!r} names {{{name}}}; the fields are {', '.join(fields)}")
            pieces.append((name, tokenizer.encode(lead + fields[name])))
    excess = sum(len(ids) for _, ids in pieces) - max_len
    truncated = excess > 0
    while excess > 0:
        longest = max((i for i, (name, _) in enumerate(pieces) if name is not None),
                      key=lambda i: len(pieces[i][1]))
        name, ids = pieces[longest]
        if len(ids) <= 1:
            words = sum(len(ids) for name, ids in pieces if name is None)
            raise UserError(f"the prompt is {words} tokens without its fields, which leaves no room for them in the "
                            f"model's {max_len}: shorten --prompt (or use a smaller --k_shot)")
        cut = min(excess, len(ids) - 1)
        pieces[longest] = (name, ids[:-cut])
        excess -= cut
    return [token for _, ids in pieces for token in ids], truncated


@dataclass
class TokenizedDataset:
    """A task's examples, tokenised once: ids, token ids and (for labelled files) labels."""
    ids: list[str]
    tokens: list[list[int]]
    labels: list[int] | None
    mirror: list[list[int]] | None = None  # the pairs with their sentences swapped (GPT-1's symmetric input)
    # evaluation batches by (batch size, pad id): the same every epoch, so built once
    evaluation_batches: dict[tuple[int, int], list[dict]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0, pad_id: int = END_OF_TEXT_ID) -> list[dict]:
        """Right-padded batches (`BATCH_PADDING`); each holds `indices` into the dataset so predictions map
        back to their rows. With a mirror, a batch of B examples has 2B rows: the B pairs, then the same pairs
        swapped. Evaluation batches (no shuffle) are built once and then reused."""
        if not shuffle and (batch_size, pad_id) in self.evaluation_batches:
            return self.evaluation_batches[batch_size, pad_id]
        lengths = [len(tokens) for tokens in self.tokens]
        batches = []
        for indices in batch_indices(lengths, batch_size, shuffle, seed):
            rows = [self.tokens[i] for i in indices] + ([self.mirror[i] for i in indices] if self.mirror else [])
            input_ids, attention_mask = pad_to_longest(rows, pad_id)
            batch = {"indices": torch.tensor(indices), "input_ids": input_ids, "attention_mask": attention_mask}
            if self.labels is not None:
                batch["labels"] = torch.tensor([self.labels[i] for i in indices])
            batches.append(batch)
        if not shuffle:
            self.evaluation_batches[batch_size, pad_id] = batches
        return batches


@dataclass
class EpochBatches:
    """The training batches of each epoch, and how many there are: a seeded shuffle per epoch (seed + epoch),
    rows of similar length grouped (`batch_indices`)."""
    data: TokenizedDataset
    batch_size: int
    seed: int
    built: tuple[int, list[dict]] | None = field(default=None, init=False, repr=False)  # the last epoch's

    def __call__(self, epoch: int) -> list[dict]:
        if self.built is None or self.built[0] != epoch:  # asked again for one epoch, it is built once
            self.built = (epoch, self.data.batches(self.batch_size, shuffle=True, seed=self.seed + epoch))
        return self.built[1]

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)  # every window but the last holds whole batches


def course_sentence(text: str) -> str:
    """A sentiment sentence as the course's classifier.py reads it: lowercased."""
    return text.lower().strip()


def course_question(text: str) -> str:
    """A Quora question as the course's datasets.py reads it: lowercased, with . ? , and ' split from the word
    before them, and each run of whitespace one space."""
    for mark in ".?,'":
        text = text.replace(mark, " " + mark)
    return " ".join(text.lower().split())


def as_written(text: str) -> str:
    return text


def tokenize_sentiment(examples: list[Sentence], tokenizer: PreTrainedTokenizerBase, template: str,
                       max_len: int, source: str, course_preprocessing: bool = False) -> TokenizedDataset:
    """Each sentence in `template` (field {sentence}); with `course_preprocessing`, lowercased first."""
    prepare = course_sentence if course_preprocessing else as_written
    tokens, cut = [], 0
    for example in examples:
        ids, truncated = encode_prompt(tokenizer, template, {"sentence": prepare(example.sentence)}, max_len)
        tokens.append(ids)
        cut += truncated
    if cut:
        warnings.warn(f"{source}: {cut} sentence(s) were longer than {max_len} tokens and were cut at the end")
    labels = None if examples[0].label is None else [example.label for example in examples]
    return TokenizedDataset([example.id for example in examples], tokens, labels)


def tokenize_paraphrase(examples: list[SentencePair], tokenizer: PreTrainedTokenizerBase, template: str,
                        max_len: int, source: str, symmetric: bool = False,
                        course_preprocessing: bool = False) -> TokenizedDataset:
    """Each pair in `template` (fields {s1} and {s2}); with `symmetric`, also with the two swapped; with
    `course_preprocessing`, the questions prepared as the course's code does (`course_question`)."""
    prepare = course_question if course_preprocessing else as_written
    orders = [("sentence1", "sentence2"), ("sentence2", "sentence1")] if symmetric else [("sentence1", "sentence2")]
    encoded, cut = [], 0
    for first, second in orders:
        tokens = []
        for example in examples:
            fields = {"s1": prepare(getattr(example, first)), "s2": prepare(getattr(example, second))}
            ids, truncated = encode_prompt(tokenizer, template, fields, max_len)
            tokens.append(ids)
            cut += truncated
        encoded.append(tokens)
    if cut:
        warnings.warn(f"{source}: {cut} prompt(s) were longer than {max_len} tokens; their questions were cut "
                      "at the end")
    labels = None if examples[0].label is None else [example.label for example in examples]
    return TokenizedDataset([example.id for example in examples], encoded[0], labels,
                            encoded[1] if symmetric else None)


def pad_to_longest(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (`BATCH_PADDING`) `[B, longest]` token ids and the attention mask (1 for real tokens)."""
    longest = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        attention_mask[row, :len(sequence)] = 1
    return input_ids, attention_mask


def batch_indices(lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Evaluation: rows sorted by length, so each batch pads little. Training: a seeded shuffle, then
    rows of similar length grouped within windows of 50 batches, and the batches shuffled."""
    if not shuffle:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = 50 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
