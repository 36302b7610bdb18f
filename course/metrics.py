"""Metrics: accuracy, macro-F1 and per-class scores for classification; chrF, distinct-n, the 14-line share
and rhyme accuracy for sonnets; and minimum-Bayes-risk selection of generated texts by chrF."""
import re
from collections.abc import Sequence

import pronouncing
from sacrebleu.metrics import CHRF
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from course.files import some_of

SONNET_LINES = 14
# Shakespearean scheme ABAB CDCD EFEF GG as 0-based line pairs
RHYME_PAIRS = ((0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 13))


# -----------------------------------------------------------------------------
# classification

def classification_metrics(golds: Sequence, preds: Sequence, labels: Sequence) -> dict:
    """Accuracy, macro-F1, per-class scores and the confusion matrix; labels are compared as strings.

    `labels` is the task's label set, in order: macro-F1 averages over exactly these classes (a class that
    is never predicted counts as F1 0), and a gold or predicted label outside them is an error. The
    confusion matrix has one row per gold class and one column per predicted class. When the classes are
    exactly {0, 1}, `precision`, `recall` and `f1` of the positive class 1 are added.
    """
    golds, preds = [str(g) for g in golds], [str(p) for p in preds]
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    if not golds:
        raise ValueError("no examples to score")
    order = [str(label) for label in labels]
    outside = sorted(set(golds + preds) - set(order))
    if outside:
        raise ValueError(f"label(s) {', '.join(outside)} are not in the label set {', '.join(order)}")
    precision, recall, f1, support = precision_recall_fscore_support(
        golds, preds, labels=order, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(golds, preds)),
        "macro_f1": float(f1.mean()),
        "labels": order,
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(order, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(golds, preds, labels=order).tolist(),
    }
    if set(order) == {"0", "1"}:
        positive = metrics["per_class"]["1"]
        metrics |= {"precision": positive["precision"], "recall": positive["recall"], "f1": positive["f1"]}
    return metrics


# -----------------------------------------------------------------------------
# sonnets

def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100) of hypotheses against one reference each: sacrebleu's CHRF with default settings."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no texts to score")
    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams of lowercased whitespace tokens, pooled over texts (n-grams do not
    cross from one text to the next); 0.0 when the texts hold no n-gram."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = []
    for text in texts:
        tokens = text.lower().split()
        grams += [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def fourteen_line_share(sonnets: Sequence[Sequence[str]]) -> float:
    """Share of sonnets with exactly 14 lines."""
    if not sonnets:
        raise ValueError("no sonnets to score")
    return sum(len(lines) == SONNET_LINES for lines in sonnets) / len(sonnets)


def _last_word(line: str) -> str:
    """The line's last word, lowercased, with letters and apostrophes only ("groan;" -> "groan",
    "self-love." -> "love"); "" when the line holds no letter."""
    words = re.findall(r"[a-z']*[a-z][a-z']*", line.lower())
    return words[-1].strip("'") if words else ""


def _spelling_rhyme(word: str) -> str:
    """The spelling from the start of the last vowel group (aeiouy) on: "thee" -> "ee", "groan" -> "oan"."""
    letters = re.sub(r"[^a-z]", "", word)
    match = re.search(r"[aeiouy]+[^aeiouy]*$", letters)
    return match.group() if match else letters


def words_rhyme(first: str, second: str) -> bool:
    """Whether two words rhyme; identical words count as a rhyme.

    Pronunciations come from the CMU Pronouncing Dictionary (through the `pronouncing` package): the
    words rhyme when any pronunciation of one shares its rhyming part (last stressed vowel on) with
    any pronunciation of the other. When either word is not in the dictionary, their spellings are
    compared from the start of the last vowel group (see `_spelling_rhyme`).
    """
    first, second = _last_word(first), _last_word(second)
    if not first or not second:
        return False
    if first == second:
        return True
    phones = [pronouncing.phones_for_word(word) for word in (first, second)]
    if all(phones):
        return bool({pronouncing.rhyming_part(p) for p in phones[0]}
                    & {pronouncing.rhyming_part(p) for p in phones[1]})
    return _spelling_rhyme(first) == _spelling_rhyme(second)


def rhyme_accuracy(sonnets: Sequence[Sequence[str]]) -> float:
    """Share of the Shakespearean rhyme pairs (ABAB CDCD EFEF GG: lines 1-3, 2-4, 5-7, 6-8, 9-11, 10-12,
    13-14) whose last words rhyme (`words_rhyme`), pooled over all sonnets. Only sonnets with at least
    14 lines are scored, on their first 14; 0.0 when there is none."""
    scored = [lines for lines in sonnets if len(lines) >= SONNET_LINES]
    if not scored:
        return 0.0
    hits = sum(words_rhyme(lines[a], lines[b]) for lines in scored for a, b in RHYME_PAIRS)
    return hits / (len(scored) * len(RHYME_PAIRS))


def sonnet_metrics(generated: dict[int, list[str]], gold: dict[int, list[str]]) -> dict:
    """chrF of generated against gold sonnets (texts joined with "\\n", matched by number, over the gold
    numbers), and distinct-1, distinct-2, 14-line share and rhyme accuracy of all generated sonnets,
    plus `count` (generated sonnets). Every gold number must be generated."""
    if not gold:
        raise ValueError("no gold sonnets")
    missing = [str(i) for i in gold if i not in generated]
    if missing:
        raise ValueError(f"{len(missing)} of {len(gold)} gold sonnets were not generated ({some_of(missing)})")
    shared = [i for i in gold if i in generated]
    texts = ["\n".join(lines) for lines in generated.values()]
    sonnets = list(generated.values())
    return {
        "chrf": chrf(["\n".join(generated[i]) for i in shared], ["\n".join(gold[i]) for i in shared]),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "fourteen_line_share": fourteen_line_share(sonnets),
        "rhyme_accuracy": rhyme_accuracy(sonnets),
        "count": len(sonnets),
    }


def mbr_select(candidates: list[str]) -> int:
    """Minimum-Bayes-risk choice: the index of the candidate with the highest mean chrF against all the
    others, i.e. the one most of the pool agrees with."""
    if not candidates:
        raise ValueError("mbr_select needs at least one candidate")
    scorer = CHRF()

    def mean_agreement(i: int) -> float:
        others = [ref for j, ref in enumerate(candidates) if j != i]
        return sum(scorer.sentence_score(candidates[i], [ref]).score for ref in others) / max(len(others), 1)

    return max(range(len(candidates)), key=mean_agreement)
