"""Build a CLIP tokenizer from a word list, with every word a single token.

Used by the built-in model (its vocabulary is the world's words) and by the tests (a tiny tokenizer
written on the spot, nothing fetched). The result is an ordinary ``transformers.CLIPTokenizer``
saved as ``vocab.json`` + ``merges.txt``, so any CLIP-based pipeline loads it.

How: a byte-level BPE is trained to completion on the word list (each word once). Applying the
learned merges in rank order replays training, so every training word ends as one token. Unknown
words fall back to sub-word pieces or single bytes, as in CLIP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def repeat_prompt(text: str, times: int) -> str:
    """``text`` given ``times`` times, space-separated, as a model trained with ``prompt_repeat`` reads
    it ("" stays "": the unconditional text is never repeated).

    Why: a CLIP text encoder is causal, so a word sees only the words before it; in "a red circle
    above a blue square" the circle's state cannot say it is on top. In the second copy every word has
    read the whole prompt once (benchmarks/text_order_probe.py: the first noun's side is then linearly
    readable, 1.000 on held-out pairs, against 0.49 from a single copy).
    """
    if times < 1:
        raise ValueError(f"prompt repeat {times} must be 1 or more")
    return text if times == 1 or not text.strip() else " ".join([text.strip()] * times)


def span_tokens(tokenizer, text: str, spans: list[tuple[int, int]], copies: int = 1) -> list[list[int]]:
    """For each character span of ``text``, its token indices in the tokenized text (BOS counted).

    ``copies`` > 1: the text encoder reads ``text`` (stripped) that many times, space-separated
    (:func:`repeat_prompt`), and every copy's tokens are listed. A word split into several tokens
    gives them all; tokens past the tokenizer's limit are left out.
    """
    full = tokenizer(text, truncation=False).input_ids
    plain = tokenizer(text, truncation=False, add_special_tokens=False).input_ids
    lead = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0)
    limit = tokenizer.model_max_length - 1  # the last position is the end-of-text token at most
    out = []
    for start, end in spans:  # a span's tokens: those of the text up to its end less those before it
        first = len(tokenizer(text[:start], add_special_tokens=False).input_ids)
        last = len(tokenizer(text[:end], add_special_tokens=False).input_ids)
        tokens = []
        for copy in range(copies):
            at = lead + copy * len(plain)
            tokens += [k for k in range(at + first, min(at + last, limit))]
        out.append(tokens)
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _train_merges(words: list[tuple[str, ...]]) -> list[tuple[str, str]]:
    """Greedy BPE to completion: merge the most frequent adjacent pair until every word is whole."""
    merges: list[tuple[str, str]] = []
    words = [w for w in words if len(w) > 1]
    while words:
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        # Most frequent first; ties broken by the pair itself so the result is deterministic.
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) > 1:
                new_words.append(tuple(out))
        words = new_words
    return merges


def build_clip_tokenizer(words: Iterable[str], out_dir: str | Path, model_max_length: int = 77):
    """Write a CLIP tokenizer whose vocabulary holds every word of ``words`` as one token.

    Words are lower-cased ASCII without spaces. Returns the loaded ``CLIPTokenizer``.
    """
    from transformers import CLIPTokenizer

    vocab_words = sorted({w.strip().lower() for w in words if w.strip()})
    for w in vocab_words:
        if not w.isascii() or any(c.isspace() for c in w):
            raise ValueError(f"tokenizer word {w!r} must be ASCII without spaces")
    byte_chars = list(_bytes_to_unicode().values())
    # CLIP marks a word's last symbol with "</w>".
    split = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in vocab_words]
    merges = _train_merges(split)

    tokens: list[str] = byte_chars + [c + "</w>" for c in byte_chars]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    tok = CLIPTokenizer(
        str(out / "vocab.json"),
        str(out / "merges.txt"),
        model_max_length=model_max_length,
        pad_token=EOS,
    )
    tok.save_pretrained(str(out))
    return tok
