"""Does the text decide an object's kind? A probe of a model in the built-in world, one U-Net call deep.

For each timestep t: a big red object of every kind is rendered on white, its latents are noised to t
(seeded), and the U-Net is asked for the clean latents under prompts naming each plain kind ("a big
red star on a white background", ...). The judge reads the decoded predictions and counts those that
show the **prompted** kind and those that show the **rendered** one. A model that follows its text
shows the prompted kind where the noise has erased the shape (high t); one that ignores the text
there predicts a kind-less blob. Prompt and render agree in 1 of 5 prompts per image, so "prompted"
at 1/5 of the total is what copying the picture alone gives.

    python benchmarks/kind_probe.py --model builtin
    python benchmarks/kind_probe.py --model PATH --seeds 1 --timesteps 600   # any world model

Prints a table; ``--json FILE`` also writes the counts.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from latentgen import Pipeline, load_model
from latentgen.pipeline import to_pil
from latentgen.world import KINDS, read_image, render_scene
from latentgen.world.layout import single_scene

PROMPTED = ("circle", "square", "triangle", "star", "heart")


def clean_prediction(out: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor, kind: str):
    """x̂0 from the U-Net's output under the model's prediction type."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if kind == "epsilon":
        return (noisy - s * out) / a
    if kind == "v_prediction":
        return a * noisy - s * out
    if kind == "sample":
        return out
    raise ValueError(f"prediction_type {kind!r} is not one of epsilon, v_prediction, sample")


@torch.no_grad()
def probe(model, timesteps: list[int], seeds: int) -> list[dict]:
    pipe = Pipeline(model)
    cfg = model.source.scheduler_config
    alphas = DDPMScheduler.from_config(cfg).alphas_cumprod
    prediction = cfg.get("prediction_type", "epsilon")
    vae, sf = model.vae, model.vae.config.scaling_factor
    size = model.source.default_size
    # the five prompts, asked of every noised render in one U-Net call and one decode
    emb = torch.cat([pipe.encode(f"a big red {kind} on a white background") for kind in PROMPTED])
    rows = []
    for t in timesteps:
        rng = random.Random(f"kind_probe:{t}")
        prompted = rendered = total = 0
        for i in range(seeds * len(KINDS)):
            source = KINDS[i % len(KINDS)]
            scene = single_scene(rng, kind=source, colour="red", size="big", background="white")
            pixels = np.asarray(render_scene(scene, size), np.float32) / 127.5 - 1
            x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(model.device, vae.dtype)
            z = vae.encode(x).latent_dist.mode() * sf
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(i)).to(z)
            a = alphas[t].to(z)
            noisy = a.sqrt() * z + (1 - a).sqrt() * noise
            batch = noisy.expand(len(PROMPTED), -1, -1, -1)
            out = model.unet(batch.to(model.dtype), torch.tensor([t]), encoder_hidden_states=emb).sample
            x0 = clean_prediction(out.to(z), batch, a, prediction)
            for kind, image in zip(PROMPTED, to_pil(pipe.decode(x0)[0]), strict=True):
                seen = [d.kind for d in read_image(image).objects]
                prompted += seen == [kind]
                rendered += seen == [source]
                total += 1
        rows.append({"t": t, "prompted": prompted, "rendered": rendered, "total": total})
        print(f"t={t}: prompted kind {prompted}/{total}, rendered kind {rendered}/{total}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--timesteps", default="200,400,600,800")
    ap.add_argument("--seeds", type=int, default=2, help="renders per kind and timestep")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu", dtype="fp32")
    rows = probe(model, [int(t) for t in args.timesteps.split(",")], args.seeds)
    print("\n| t | " + " | ".join(str(r["t"]) for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for what in ("prompted", "rendered"):
        cells = " | ".join(f"{r[what]}/{r['total']}" for r in rows)
        print(f"| prediction shows the {what} kind | {cells} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
