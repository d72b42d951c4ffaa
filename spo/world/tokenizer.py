"""A CLIP tokenizer for the tiny world: CLIP's own BPE, cut to the merges the grammar's words use.

The merges are CLIP's (``open_clip``'s bundled ``bpe_simple_vocab_16e6.txt.gz``), kept in CLIP's
rank order, so every grammar word tokenizes exactly as the real CLIP tokenizer splits it (one token
per word for all but "cyan", which CLIP splits in two) and any other text still tokenizes, byte by byte where no kept merge applies. The
vocabulary is about 560 tokens instead of 49,408, which keeps the text encoders' embeddings small.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Iterable

from spo.models.tiny import _bytes_to_unicode


def _clip_merges() -> list[tuple[str, str]]:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    return [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]


def merges_for(words: Iterable[str], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to ``words`` (lower-case ASCII), in CLIP's rank order."""
    rank = {m: i for i, m in enumerate(merges)}
    used: set[tuple[str, str]] = set()
    for word in set(words):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, _ = min(pairs)
            if best == len(rank):
                break
            pair = merges[best]
            used.add(pair)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
    return sorted(used, key=rank.__getitem__)


def world_tokenizer(words: Iterable[str], *, max_length: int, pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer`` whose vocabulary covers ``words`` with one token each where CLIP does.

    ``pad_token='!'`` gives SDXL's second tokenizer (real SDXL pads it with '!', id 0).
    """
    from transformers import CLIPTokenizer

    merges = merges_for(words, _clip_merges())
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length,
                             pad_token=pad_token)


def grammar_words() -> list[str]:
    from spo.world.grammar import COLOURS, SHAPES, SIZES

    return ["a", "on", "background", *COLOURS, *SHAPES, *SIZES]


def grammar_tokenizer(pad_token: str = "<|endoftext|>"):
    """The tiny world's tokenizer: the grammar's words, the text encoders' context length. (Here,
    not in ``pretrain``, so that ``release`` needs no import of ``pretrain``, which imports it.)"""
    from spo.world.architectures import MAX_TOKENS

    return world_tokenizer(grammar_words(), max_length=MAX_TOKENS, pad_token=pad_token)
