"""An offline CLIP tokenizer for the `tiny` preset.

It is a real `CLIPTokenizer` (byte-level BPE, `</w>` word ends, `<|startoftext|>`/`<|endoftext|>`) whose
vocabulary holds every byte symbol plus whole-word merges for the words that anomaly prompts use, so
prompts stay short. Any other word falls back to one token per character, so nothing is ever unknown.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from crossgraft.bpe import byte_symbols

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
CONTEXT_LENGTH = 77

PROMPT_WORDS = tuple(
    (
        "a the of photo with flaw defect damage damaged broken object normal anomalous good "
        "bottle cable capsule carpet grid hazelnut leather metal nut pill screw tile toothbrush transistor wood zipper "
        "candle capsules cashew chewinggum fryum macaroni pcb pipe "
        "stripes checker dots rings waves weave disc plate panel fabric scan surface texture"
    ).split()
)


def build_tiny_tokenizer(words: tuple[str, ...] = PROMPT_WORDS) -> CLIPTokenizer:
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(words):
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab[START_OF_TEXT] = len(vocab)
    vocab[END_OF_TEXT] = len(vocab)  # highest id, as in OpenAI's vocabulary (argmax finds EOT)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)  # type: ignore[arg-type]
