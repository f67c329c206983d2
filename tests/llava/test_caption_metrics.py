"""Caption metrics against coco-caption (pycocoevalcap 1.2, run by hand on the same words), and their
decomposition into summed per-sample statistics that the bootstrap relies on."""

import numpy as np
import pytest

from crossgraft.llava.caption_metrics import (
    CAPTION_METRICS,
    caption_statistics,
    longest_common_subsequence,
    rouge_l,
    summed_value,
    words,
)

PREDICTIONS = [
    "A red circle on a white background.",
    "A blue square on a black background.",
    "a green triangle",
    "yellow yellow yellow on grey",
    "A red square on a grey background.",
]
REFERENCES = [
    "A red circle on a white background.",
    "A blue triangle on a black background.",
    "A green triangle on a grey background.",
    "A yellow circle on a grey background.",
    "A blue circle on a white background.",
]
# pycocoevalcap 1.2: Bleu(4)[3], Rouge(), Cider() on {i: [" ".join(words(text))]}
COCO = {"bleu4": 0.40992654772995907, "rouge_l": 0.6947231193355836, "cider_d": 4.062215544923214}


def test_metrics_equal_coco_caption():
    statistics = caption_statistics(PREDICTIONS, REFERENCES)
    for name, expected in COCO.items():
        assert summed_value(CAPTION_METRICS[name].finalize, statistics[name]) == pytest.approx(expected, abs=1e-12)


def test_a_perfect_caption_set_scores_bleu_and_rouge_one():
    statistics = caption_statistics(REFERENCES, REFERENCES)
    assert summed_value(CAPTION_METRICS["bleu4"].finalize, statistics["bleu4"]) == pytest.approx(1.0)
    assert summed_value(CAPTION_METRICS["rouge_l"].finalize, statistics["rouge_l"]) == pytest.approx(1.0)


def test_weighted_sums_recompute_the_metric_on_a_resample():
    statistics = caption_statistics(PREDICTIONS, REFERENCES)["bleu4"]
    counts = np.array([[2.0, 0, 1, 0, 2]])  # samples 0, 0, 2, 4, 4
    picked = [0, 0, 2, 4, 4]
    direct = caption_statistics([PREDICTIONS[i] for i in picked], [REFERENCES[i] for i in picked])["bleu4"]
    finalize = CAPTION_METRICS["bleu4"].finalize
    assert finalize(counts @ statistics)[0] == pytest.approx(summed_value(finalize, direct))


def test_words_and_lcs():
    assert words("A Red-circle, on white!") == ["a", "red", "circle", "on", "white"]
    assert longest_common_subsequence("a b c d".split(), "a c d b".split()) == 3
    assert rouge_l([], ["a"]) == 0.0
