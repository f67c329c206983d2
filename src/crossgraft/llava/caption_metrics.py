"""Caption metrics computed in-house, offline, with coco-caption's definitions: BLEU-4 (corpus level), ROUGE-L
(F with beta 1.2, mean over samples) and CIDEr-D (tf-idf over 1-4-grams with document frequencies from this
set's references, clipped, Gaussian length penalty sigma 6, x10, mean over samples). Text is lowercased and
split into words with punctuation dropped (coco-caption runs the PTB tokenizer, a Java program, instead).

Every metric is a sum over samples of per-sample statistics followed by a `finalize` step, so that a bootstrap
resample (a weight per sample) recomputes it exactly: `finalize(weights @ statistics)`. One reference per sample.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLEU_ORDER = 4
ROUGE_BETA = 1.2
CIDER_ORDER = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0
# coco-caption's smoothing of empty n-gram counts (so that log(0) never happens)
BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9


def words(text: str) -> list[str]:
    """Lowercased words without punctuation."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def ngrams(tokens: list[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


@dataclass(frozen=True)
class SummedMetric:
    """A metric as per-sample statistics (n, k) and a finalize of their (weighted) sums (R, k) → (R,)."""

    name: str
    finalize: Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------- BLEU
def bleu_statistics(prediction: list[str], reference: list[str]) -> list[float]:
    """[clipped matches n=1..4, predicted n-grams n=1..4, prediction length, reference length]."""
    matches, totals = [], []
    for order in range(1, BLEU_ORDER + 1):
        predicted, referenced = ngrams(prediction, order), ngrams(reference, order)
        matches.append(sum(min(count, referenced[gram]) for gram, count in predicted.items()))
        totals.append(max(len(prediction) - order + 1, 0))
    return [*matches, *totals, len(prediction), len(reference)]


def bleu_finalize(summed: np.ndarray) -> np.ndarray:
    matches, totals = summed[:, :BLEU_ORDER], summed[:, BLEU_ORDER : 2 * BLEU_ORDER]
    prediction_length, reference_length = summed[:, -2], summed[:, -1]
    log_precision = np.log((matches + BLEU_TINY) / (totals + BLEU_SMALL)).mean(axis=1)
    ratio = (prediction_length + BLEU_TINY) / (reference_length + BLEU_SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, BLEU_TINY)), 1.0)
    return brevity * np.exp(log_precision)


# ------------------------------------------------------------------------------------------------ ROUGE-L
def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    common = longest_common_subsequence(prediction, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return (1 + ROUGE_BETA**2) * precision * recall / (recall + ROUGE_BETA**2 * precision)


# ------------------------------------------------------------------------------------------------ CIDEr-D
def _tfidf(tokens: list[str], log_documents: float, document_frequency: Counter) -> tuple[list[dict], list[float]]:
    """Per n-gram order: the tf-idf vector and its norm."""
    vectors, norms = [], []
    for order in range(1, CIDER_ORDER + 1):
        vector = {
            gram: count * (log_documents - math.log(max(1.0, document_frequency[gram])))
            for gram, count in ngrams(tokens, order).items()
        }
        vectors.append(vector)
        norms.append(math.sqrt(sum(value * value for value in vector.values())))
    return vectors, norms


def cider_d(predictions: list[list[str]], references: list[list[str]]) -> list[float]:
    """Per-sample CIDEr-D; the document frequencies come from all references of the set."""
    document_frequency: Counter = Counter()
    for reference in references:
        for order in range(1, CIDER_ORDER + 1):
            document_frequency.update(set(ngrams(reference, order)))
    log_documents = math.log(float(len(references)))
    scores = []
    for prediction, reference in zip(predictions, references):
        predicted, predicted_norms = _tfidf(prediction, log_documents, document_frequency)
        referenced, referenced_norms = _tfidf(reference, log_documents, document_frequency)
        # coco-caption's length is the number of bigrams (a quirk kept for comparable numbers)
        delta = max(len(prediction) - 1, 0) - max(len(reference) - 1, 0)
        total = 0.0
        for order in range(CIDER_ORDER):
            value = sum(
                min(weight, referenced[order].get(gram, 0.0)) * referenced[order].get(gram, 0.0)
                for gram, weight in predicted[order].items()
            )
            if predicted_norms[order] and referenced_norms[order]:
                value /= predicted_norms[order] * referenced_norms[order]
            total += value * math.exp(-(delta**2) / (2 * CIDER_SIGMA**2))
        scores.append(total / CIDER_ORDER * CIDER_SCALE)
    return scores


def mean_finalize(summed: np.ndarray) -> np.ndarray:
    """Statistics [value, weight]: the weighted mean."""
    return summed[:, 0] / np.maximum(summed[:, 1], 1e-300)


def caption_statistics(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-sample statistics (n, k) of BLEU-4, ROUGE-L and CIDEr-D."""
    predicted, referenced = [words(p) for p in predictions], [words(r) for r in references]
    return {
        "bleu4": np.array([bleu_statistics(p, r) for p, r in zip(predicted, referenced)], dtype=float),
        "rouge_l": np.array([[rouge_l(p, r), 1.0] for p, r in zip(predicted, referenced)], dtype=float),
        "cider_d": np.array([[score, 1.0] for score in cider_d(predicted, referenced)], dtype=float),
    }


CAPTION_METRICS = {
    "bleu4": SummedMetric("BLEU-4", bleu_finalize),
    "rouge_l": SummedMetric("ROUGE-L", mean_finalize),
    "cider_d": SummedMetric("CIDEr-D", mean_finalize),
}


def summed_value(finalize: Callable[[np.ndarray], np.ndarray], statistics: np.ndarray) -> float:
    """The metric over the whole set: finalize of the plain sums."""
    return float(finalize(statistics.sum(axis=0, keepdims=True))[0])
