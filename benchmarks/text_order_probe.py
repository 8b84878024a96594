"""Does the text encoder say which way round a relation goes? A linear probe of its states.

For prompts "a C1 K1 above a C2 K2" and "a C1 K1 below a C2 K2" (every ordered pair of the world's
kinds and colours), the text encoder's last hidden state at each noun is read, and a logistic
regression is fitted to tell "above" from "below" from that one state. Fitted on three quarters of
the kind pairs, scored on the others, so a probe that learned kinds, not the relation, scores half.

The encoder is causal, so in the plain prompt the first noun cannot have seen the relation word
(chance, by construction: a check on the probe itself); the second noun can. The probe is then
repeated with the prompt given twice ("echo"), reading the nouns of the second copy, whose first
noun has seen the whole prompt once. What this does not measure is whether the U-Net uses the
difference (benchmarks/relation_probe.py does). For models of the built-in world (each kind one
token of their vocabulary).

    python benchmarks/text_order_probe.py --model builtin
    python benchmarks/text_order_probe.py --model PATH --prompts 1000 --json FILE
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from latentgen import load_model
from latentgen.tokenizer import repeat_prompt
from latentgen.world import KINDS
from latentgen.world.prompts import COLOUR_NAMES

RELATIONS = ("above", "below")


def _refuse(message: str) -> None:
    """A model this probe cannot read is a usage error: one line, exit 2, as --prompts below 100."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def noun_states(model, texts: list[str], nouns: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's final states at the last occurrence of each prompt's two nouns."""
    tok = model.tokenizer
    ids = tok(
        texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = (
            model.text_encoder(ids.input_ids.to(model.text_encoder.device)).last_hidden_state.float().cpu()
        )
    token_of = {}  # each kind's one token, looked up once rather than per prompt
    for noun in {n for pair in nouns for n in pair}:
        tokens = tok(noun, add_special_tokens=False).input_ids
        if len(tokens) != 1:
            _refuse(f"'{noun}' is not one token of this model's vocabulary: use a built-in-world model")
        token_of[noun] = tokens[0]
    first, second = [], []
    for row, (a, b), states in zip(ids.input_ids.tolist(), nouns, hidden, strict=True):
        for noun, out in ((a, first), (b, second)):
            token = token_of[noun]
            if token not in row:
                _refuse(f"'{noun}' does not fit in {tok.model_max_length} tokens of this model's text")
            out.append(states[len(row) - 1 - row[::-1].index(token)].numpy())
    return np.stack(first), np.stack(second)


def held_out_accuracy(x: np.ndarray, y: np.ndarray, groups: list, steps: int = 500) -> float:
    """Logistic regression (standardised features, small L2) fitted on all but every fourth group."""
    held = set(sorted(set(groups))[::4])
    test = np.array([g in held for g in groups])
    xt, yt = torch.tensor(x[~test]), torch.tensor(y[~test], dtype=torch.float32)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        logits = (xt - mean) / std @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        predicted = ((torch.tensor(x[test]) - mean) / std @ w + b > 0).numpy()
    return float((predicted == y[test]).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--prompts", type=int, default=3000, help="how many of the prompts to use (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.prompts < 100:
        ap.error(
            f"--prompts {args.prompts}: use at least 100 (the probe holds out a quarter of the kind pairs)"
        )

    model = load_model(args.model, device="cpu", dtype="fp32")
    rows = [
        (k1, k2, c1, c2, rel)
        for k1, k2 in itertools.permutations(KINDS, 2)
        for c1, c2 in itertools.permutations(COLOUR_NAMES, 2)
        for rel in RELATIONS
    ]
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.prompts]
    prompts = [f"a {c1} {k1} {rel} a {c2} {k2}" for k1, k2, c1, c2, rel in rows]
    nouns = [(k1, k2) for k1, k2, *_ in rows]
    y = np.array([rel == RELATIONS[0] for *_, rel in rows])
    # a model trained with prompt_repeat=2 reads prompts as "echo" does
    report: dict = {"model": args.model, "prompt_repeat": model.source.prompt_repeat, "prompts": len(rows)}
    for mode, texts in (("plain", prompts), ("echo", [repeat_prompt(p, 2) for p in prompts])):
        first, second = noun_states(model, texts, nouns)
        report[mode] = {
            "first_noun": held_out_accuracy(first, y, nouns),
            "second_noun": held_out_accuracy(second, y, nouns),
        }
        print(
            f"{mode:5s}  above/below told apart from the first noun's state: {report[mode]['first_noun']:.3f}, "
            f"from the second noun's: {report[mode]['second_noun']:.3f} (held-out kind pairs; 0.5 = chance)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
