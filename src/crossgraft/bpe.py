"""The byte table of byte-level BPE tokenizers (GPT-2, CLIP, Qwen2), used by the offline tiny tokenizers of
both families."""

from __future__ import annotations


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes (the GPT-2 / CLIP mapping): the bytes
    that print stand for themselves and come first, the others follow, shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            symbols.append(256 + extra)
            extra += 1
    return [chr(code) for code in symbols]
