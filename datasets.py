"""Loading, prompts and batching for the course's tasks. Each dataset is tokenised once."""
import csv
import random
import string
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import PreTrainedTokenizerBase

SENTIMENT_NUM_LABELS = {"sst": 5, "cfimdb": 2}


@dataclass
class SentimentExample:
    id: str
    sentence: str
    label: int | None  # None in the unlabelled test files


Item = TypeVar("Item")


def seeded_sample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """`limit` of `items` drawn with `seed` (the course files are not shuffled), or all of them when limit is 0."""
    return random.Random(seed).sample(items, min(limit, len(items))) if limit else items


def open_course_csv(path: str | Path, required: tuple[str, ...]) -> tuple[csv.DictReader, object]:
    """A `csv.DictReader` over a course file (tab-separated, CRLF or LF), after checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `bash setup.sh` or copy the course data into data/")
    handle = open(path, newline="", encoding="utf-8")
    reader = csv.DictReader(handle, delimiter="\t")
    missing = [column for column in required if column not in (reader.fieldnames or [])]
    if missing:
        handle.close()
        raise ValueError(f"{path}, line 1: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
    return reader, handle


def read_sentiment(path: str | Path, num_labels: int, labelled: bool = True) -> list[SentimentExample]:
    """Rows of an `ids-{sst,cfimdb}-*.csv` file. Extra columns (the test files' unnamed one) are ignored;
    a row without an id or sentence, a repeated id, or a label outside 0..num_labels-1 is an error."""
    required = ("id", "sentence", "sentiment") if labelled else ("id", "sentence")
    reader, handle = open_course_csv(path, required)
    examples, seen = [], set()
    with handle:
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            example_id, sentence = (row["id"] or "").strip(), (row["sentence"] or "").strip()
            if not example_id:
                raise ValueError(f"{where}: the row has no id")
            if example_id in seen:
                raise ValueError(f"{where}: id {example_id} appears twice")
            if not sentence:
                raise ValueError(f"{where}: id {example_id} has an empty sentence")
            label = parse_label(row["sentiment"], num_labels, where) if labelled else None
            seen.add(example_id)
            examples.append(SentimentExample(example_id, sentence, label))
    if not examples:
        raise ValueError(f"{path} has no rows")
    return examples


@dataclass
class ParaphraseExample:
    id: str
    sentence1: str
    sentence2: str
    label: int | None  # 1 duplicate, 0 not; None in the unlabelled test file


def read_paraphrase(path: str | Path, labelled: bool = True) -> list[ParaphraseExample]:
    """Rows of a `quora-*.csv` file. As in the course files, labelled rows whose label is empty or not a
    number are skipped and counted in one warning; a row without an id or a repeated id is an error."""
    required = ("id", "sentence1", "sentence2", "is_duplicate") if labelled else ("id", "sentence1", "sentence2")
    reader, handle = open_course_csv(path, required)
    examples, seen, skipped = [], set(), []
    with handle:
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            example_id = (row["id"] or "").strip()
            if not example_id:
                raise ValueError(f"{where}: the row has no id")
            if example_id in seen:
                raise ValueError(f"{where}: id {example_id} appears twice")
            seen.add(example_id)
            label = None
            if labelled:
                try:
                    label = parse_label(row["is_duplicate"], 2, where)
                except ValueError:
                    skipped.append(reader.line_num)
                    continue
            examples.append(ParaphraseExample(example_id, (row["sentence1"] or "").strip(),
                                              (row["sentence2"] or "").strip(), label))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) without a 0/1 label (lines "
                      f"{', '.join(map(str, skipped[:10]))}{', ...' if len(skipped) > 10 else ''})")
    if not examples:
        raise ValueError(f"{path} has no usable rows")
    return examples


def parse_label(text: str | None, num_labels: int, where: str) -> int:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {text!r} is not a number") from None
    if value != int(value) or not 0 <= value < num_labels:
        raise ValueError(f"{where}: label {text!r} is outside the label set 0..{num_labels - 1}")
    return int(value)


def read_sonnets(path: str | Path) -> dict[int, list[str]]:
    """Sonnets of a course file: a header, then each sonnet's number on a line of its own followed by its
    lines (blank lines ignored, CRLF or LF). Sonnets of any length are kept (the course's 99 has 15 lines,
    126 has 12); a number with no lines or a repeated number is an error naming the sonnet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `bash setup.sh` or copy the course data into data/")
    sonnets: dict[int, list[str]] = {}
    current = None
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, line in enumerate(f.read().splitlines(), start=1):
            if line.strip().isdigit():
                current = int(line)
                if current in sonnets:
                    raise ValueError(f"{path}, line {line_number}: sonnet {current} appears twice")
                sonnets[current] = []
            elif line.strip() and current is not None:
                sonnets[current].append(line.rstrip())
    empty = [number for number, lines in sonnets.items() if not lines]
    if empty:
        raise ValueError(f"{path}: sonnet {empty[0]} has a number but no lines")
    if not sonnets:
        raise ValueError(f"{path} holds no numbered sonnets")
    return sonnets


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
            raise ValueError(f"template {template!r} leaves no room for its fields within {max_len} tokens")
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

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0, pad_id: int = 50256) -> list[dict]:
        """Padded batches; each holds `indices` into the dataset so predictions map back to their rows. With
        a mirror, a batch of B examples has 2B rows: the B pairs, then the same pairs swapped."""
        lengths = [len(tokens) for tokens in self.tokens]
        batches = []
        for indices in batch_indices(lengths, batch_size, shuffle, seed):
            rows = [self.tokens[i] for i in indices] + ([self.mirror[i] for i in indices] if self.mirror else [])
            input_ids, attention_mask = pad_to_longest(rows, pad_id)
            batch = {"indices": torch.tensor(indices), "input_ids": input_ids, "attention_mask": attention_mask}
            if self.labels is not None:
                batch["labels"] = torch.tensor([self.labels[i] for i in indices])
            batches.append(batch)
        return batches


def tokenize_sentiment(examples: list[SentimentExample], tokenizer: PreTrainedTokenizerBase, template: str,
                       max_len: int, source: str) -> TokenizedDataset:
    tokens, cut = [], 0
    for example in examples:
        ids, truncated = encode_prompt(tokenizer, template, {"sentence": example.sentence}, max_len)
        tokens.append(ids)
        cut += truncated
    if cut:
        warnings.warn(f"{source}: {cut} sentence(s) were longer than {max_len} tokens and were cut at the end")
    labels = None if examples[0].label is None else [example.label for example in examples]
    return TokenizedDataset([example.id for example in examples], tokens, labels)


def tokenize_paraphrase(examples: list[ParaphraseExample], tokenizer: PreTrainedTokenizerBase, template: str,
                        max_len: int, source: str, symmetric: bool = False) -> TokenizedDataset:
    """Each pair in `template` (fields {s1} and {s2}); with `symmetric`, also with the two swapped."""
    orders = [("sentence1", "sentence2"), ("sentence2", "sentence1")] if symmetric else [("sentence1", "sentence2")]
    encoded, cut = [], 0
    for first, second in orders:
        tokens = []
        for example in examples:
            fields = {"s1": getattr(example, first), "s2": getattr(example, second)}
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
    """Right-padded `[B, longest]` token ids and the attention mask (1 for real tokens)."""
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
