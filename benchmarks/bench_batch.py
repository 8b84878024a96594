"""Batch throughput: latentgen batch vs diffusers, 64 prompts, one process, same model and settings.

(a) latentgen's batch runner (grouped U-Net batches, prompts encoded once, manifest + PNG metadata),
(b) a loop calling diffusers' StableDiffusionPipeline once per prompt,
(c) diffusers called with a list of ``--batch-size`` prompts per call.
Every variant writes each image as a PNG, so the comparison includes the same file work.
Results: benchmarks/batch.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from latentgen import Pipeline, load_model
from latentgen import batch as b
from latentgen.prompts_file import PromptLine
from latentgen.samplers import Sampler
from latentgen.tiny import bench_model, reference_pipeline

HERE = Path(__file__).parent
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white")
KINDS = ("circle", "square", "triangle", "star", "heart", "cat", "hat", "circle")


def prompts(n: int) -> list[str]:
    return [f"a {COLOURS[i % 8]} {KINDS[(i // 8) % 8]}" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="latentgen-bench-batch-"))
    model_arg, label = bench_model(args.model, tmp)
    model = load_model(model_arg, device="cpu", dtype="fp32")
    size, steps, guidance = model.source.default_size, args.steps, 7.5
    texts = prompts(args.prompts)

    ref = reference_pipeline(model, Sampler.DPM_SOLVER)

    def run_latentgen(out: Path) -> None:
        lines = [PromptLine(i + 1, i, {"prompt": t}) for i, t in enumerate(texts)]
        defaults = {"steps": steps, "guidance": guidance, "sampler": "dpm-solver", "seed": 0}
        items, _ = b.plan(lines, defaults, model.source, model.content_hash, "fp32")
        shard = b.ManifestShard(out / "manifest.jsonl")
        todo, _ = b.pending(items, out, shard)
        b.run(
            Pipeline(model), todo, out, shard, batch_size=args.batch_size, summary=b.Summary(total=len(items))
        )
        shard.close()

    def run_diffusers(out: Path, per_call: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(texts), per_call):
            chunk = texts[start : start + per_call]
            images = ref(
                chunk,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(0) for _ in chunk],
            ).images
            for i, im in enumerate(images):
                im.save(out / f"{start + i:05d}.png")

    variants = {
        "latentgen_batch": run_latentgen,
        "diffusers_loop_per_prompt": lambda out: run_diffusers(out, 1),
        "diffusers_list_per_call": lambda out: run_diffusers(out, args.batch_size),
    }
    run_diffusers(tmp / "warm", 2)  # warm-up (allocator, first-call costs)
    results = {}
    for name, fn in variants.items():
        out = tmp / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        fn(out)
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": seconds, "images_per_second": len(texts) / seconds}
    base = results["diffusers_loop_per_prompt"]["images_per_second"]
    for r in results.values():
        r["ratio_vs_diffusers_loop"] = r["images_per_second"] / base

    report = {
        "model": label,
        "prompts": len(texts),
        "image_size": size,
        "steps": steps,
        "guidance": guidance,
        "sampler": "dpm-solver",
        "batch_size": args.batch_size,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    (HERE / "batch.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# `make bench`: batch throughput",
        "",
        f"{len(texts)} prompts, model {label}, {size}×{size}, {steps} steps DPM++ 2M, CFG {guidance}, CPU fp32, "
        f"{torch.get_num_threads()} threads; U-Net batch / prompts per call: {args.batch_size}. "
        "Every variant writes PNGs.",
        "",
        "| variant | images/s | × diffusers per-prompt loop |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['images_per_second']:.2f} | {r['ratio_vs_diffusers_loop']:.2f} |")
    (HERE / "batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
