"""Sonnet metrics and the `sonnets` command of evaluation.py."""
import json
from pathlib import Path

import pronouncing
import pytest
from sacrebleu.metrics import CHRF

from course.metrics import (chrf, distinct_n, fourteen_line_share, mbr_select, rhyme_accuracy, sonnet_metrics,
                            words_rhyme)
from course.sonnets import read_sonnets
from evaluation import main

ROOT = Path(__file__).resolve().parent.parent
GOLD = ROOT / "data" / "TRUE_sonnets_held_out_dev.txt"
needs_gold = pytest.mark.skipif(not GOLD.is_file(), reason="data/TRUE_sonnets_held_out_dev.txt is missing")

# Scheme pairs 1-3, 2-4, 5-7, 6-8, 9-11, 10-12, 13-14; 5 of the 7 rhyme.
HAND_SONNET = [
    "I waited all the day,",        # 1  A  day / way: rhyme
    "and watched the falling night;",  # 2  B  night / light: rhyme
    "I could not find the way",     # 3  A
    "to reach the morning light.",  # 4  B
    "Beneath a silent tree",        # 5  C  tree / house: no rhyme
    "there sang a zorblight",       # 6  D  zorblight / bright: not in CMUdict, rhymes by spelling ("ight")
    "I stood beside the house",     # 7  C
    "and all the stars were bright.",  # 8  D
    "Along the road a cat",         # 9  E  cat / dog: no rhyme
    "looked out upon the sea;",     # 10 F  sea / me: rhyme
    "and barked at it a dog",       # 11 E
    "that would not look at me.",   # 12 F
    "  So long as I can love,",     # 13 G  love / love: identical words count as a rhyme
    "  so long I sing of love!",    # 14 G
]


def write_text(path, text, line_end="\n"):
    path.write_bytes(text.replace("\n", line_end).encode("utf-8"))
    return path


# -----------------------------------------------------------------------------
# metrics

def test_distinct_n_counts_pooled_ngrams_within_each_text():
    texts = ["the cat the dog", "The  cat"]
    # unigrams: the cat the dog the cat -> 3 unique of 6
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the dog) | (the cat) -> 3 unique of 4; (dog the) spans two texts, not counted
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_fourteen_line_share():
    assert fourteen_line_share([["x"] * 14, ["x"] * 13, ["x"] * 15, ["x"] * 14]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        fourteen_line_share([])


def test_hand_made_sonnet_rhymes_on_five_of_seven_pairs():
    assert pronouncing.phones_for_word("zorblight") == []  # so the spelling fallback decides
    assert words_rhyme("there sang a zorblight", "the stars were bright.")
    assert not words_rhyme("a zorblight", "a cat")
    assert rhyme_accuracy([HAND_SONNET]) == pytest.approx(5 / 7)


def test_rhyme_accuracy_scores_only_sonnets_of_at_least_fourteen_lines_on_their_first_fourteen():
    perfect = ["day", "night", "way", "light", "tree", "house", "sea", "mouse",
               "cat", "dog", "hat", "log", "love", "above"]
    assert rhyme_accuracy([perfect]) == 1.0
    assert rhyme_accuracy([perfect + ["zzz"], HAND_SONNET[:13]]) == 1.0  # 15 lines: first 14; 13 lines: skipped
    assert rhyme_accuracy([perfect, HAND_SONNET]) == pytest.approx((7 + 5) / 14)
    assert rhyme_accuracy([HAND_SONNET[:13]]) == 0.0


def test_chrf_of_identical_texts_is_100_and_of_disjoint_texts_is_low():
    texts = ["Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.",
             "When forty winters shall besiege thy brow"]
    assert chrf(texts, texts) == pytest.approx(100.0)
    assert chrf(["qqq zzz xxx", "kkk"], ["abc def", "wow"]) < 10
    with pytest.raises(ValueError):
        chrf(["a"], ["a", "b"])


def test_sonnet_metrics_are_json_serialisable_and_need_every_gold_sonnet():
    gold = {1: HAND_SONNET, 2: HAND_SONNET[:13]}
    metrics = sonnet_metrics({1: HAND_SONNET, 2: HAND_SONNET[:13], 3: ["extra"]}, gold)
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["chrf"] == pytest.approx(100.0)  # over the gold numbers only
    assert metrics["count"] == 3
    assert metrics["fourteen_line_share"] == pytest.approx(1 / 3)
    assert metrics["rhyme_accuracy"] == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="1 of 2 gold sonnets were not generated"):
        sonnet_metrics({1: HAND_SONNET}, gold)


# -----------------------------------------------------------------------------
# sonnet files

@needs_gold
def test_the_gold_file_reads_as_sonnets_132_to_143_of_fourteen_lines():
    sonnets = read_sonnets(GOLD)
    assert list(sonnets) == list(range(132, 144))
    assert all(len(lines) == 14 for lines in sonnets.values())
    assert sonnets[132][0] == "Thine eyes I love, and they, as pitying me,"


@needs_gold
def test_the_gold_sonnets_mostly_rhyme():
    accuracy = rhyme_accuracy(list(read_sonnets(GOLD).values()))
    print(f"rhyme accuracy of {GOLD.name}: {accuracy:.4f}")
    assert accuracy > 0.6


# -----------------------------------------------------------------------------
# command line

@needs_gold
def test_the_command_scores_the_gold_file_against_itself(capsys):
    main(["sonnets", str(GOLD), str(GOLD), "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["chrf"] == pytest.approx(100.0)
    assert metrics["count"] == 12
    assert metrics["fourteen_line_share"] == 1.0


def test_the_command_reports_bad_input_in_one_line(tmp_path, capsys):
    generated = write_text(tmp_path / "generated.txt", "Sonnets\n\n1\na\n")
    gold = write_text(tmp_path / "gold.txt", "Sonnets\n\n1\na\n\n2\nb\n")
    for argv, problem in ((["sonnets", str(generated), str(gold)], "generated.txt lacks 1 of the 2 sonnets of"),
                          (["sonnets", str(tmp_path / "missing.txt"), str(gold)], "missing.txt does not exist")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.startswith("evaluation.py: error: ") and error.count("\n") == 1
        assert problem in error


def test_mbr_select_prefers_the_consensus():
    candidates = [
        "Shall I compare thee to a summer's day?",
        "Shall I compare thee to a summers day?",
        "Quantum chromodynamics binds quarks with gluons.",
        "Shall I compare you to a summer's day?",
    ]
    chrf = CHRF()
    means = [sum(chrf.sentence_score(c, [r]).score for j, r in enumerate(candidates) if j != i) / 3
             for i, c in enumerate(candidates)]
    chosen = mbr_select(candidates)
    assert chosen == max(range(4), key=means.__getitem__)
    assert chosen != 2
    assert mbr_select(["only one"]) == 0
