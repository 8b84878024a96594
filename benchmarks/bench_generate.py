"""latentgen against diffusers' StableDiffusionPipeline on the same model, in one process, alternating.

Measures seconds per image for 1 and 16 images per call (``--sizes``) at the model's default sampler,
steps and guidance (CFG on), the ratio latentgen/diffusers (below 1 means latentgen is faster), with
latentgen's layout guidance at the model's default (the prompt has a relation, so it is at work where
the model turns it on) and with layout, subject and count guidance off (the same computation as
diffusers), latentgen on a prompt naming two things with no relation (``AND_PROMPT``: subject
guidance at the model's default, one more U-Net pass with gradients per step where the model turns
it on) and on a counted prompt (``COUNT_PROMPT``: count guidance at the model's default), and the
wall time and peak resident memory of
one whole ``latentgen generate`` process (interpreter start + import + load + generate + write) for
the same sizes, and for the second prompt.

The model is the built-in one when it is installed, else the foundation's ``small`` random model
(SD-shaped, a few million parameters, 64×64 images). Results: benchmarks/generate.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from latentgen import GenerationRequest, Pipeline, load_model
from latentgen.tiny import bench_model, reference_pipeline

HERE = Path(__file__).parent
PROMPT = "a red circle above a blue square"
AND_PROMPT = "a red circle and a blue square"
COUNT_PROMPT = "four small blue stars"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_process(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one child process; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's")
    ap.add_argument("--sampler", default=None, help="default: the model's")
    ap.add_argument("--sizes", default="1,16", help="images per call to measure")
    ap.add_argument(
        "--model", default=None, help="default: builtin if installed, else the small random model"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="latentgen-bench-"))
    model_arg, model_label = bench_model(args.model, tmp)

    model = load_model(model_arg, device="cpu", dtype="fp32")
    ours = Pipeline(model)
    base = GenerationRequest(
        PROMPT, steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=0
    ).resolve(model.source)
    steps, guidance, sampler = base.steps, base.guidance, base.sampler
    theirs = reference_pipeline(model, sampler)
    size = model.source.default_size
    sizes = [int(n) for n in args.sizes.split(",")]

    def run_ours(n: int, off: bool = False, prompt: str = PROMPT):
        """``off``: layout, subject and count guidance and fill-in off, the same computation as
        diffusers'."""
        request = replace(base, num_images=n, prompt=prompt)
        if off:
            request = replace(
                request, layout_strength=0.0, subject_strength=0.0, count_strength=0.0, fill_in=False
            )
        ours.generate(request, batch_size=n)

    def run_theirs(n: int):
        theirs(
            [PROMPT] * n,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(n)],
        )

    results = {}
    for n in sizes:
        run_ours(n), run_ours(n, off=True), run_ours(n, prompt=AND_PROMPT), run_theirs(n)  # warm-up
        run_ours(n, prompt=COUNT_PROMPT)
        t_ours, t_off, t_and, t_count, t_theirs = [], [], [], [], []
        for _ in range(args.repeats):  # alternate, so drift in machine load hits all alike
            t_ours.append(timed(lambda n=n: run_ours(n)) / n)
            t_off.append(timed(lambda n=n: run_ours(n, off=True)) / n)
            t_and.append(timed(lambda n=n: run_ours(n, prompt=AND_PROMPT)) / n)
            t_count.append(timed(lambda n=n: run_ours(n, prompt=COUNT_PROMPT)) / n)
            t_theirs.append(timed(lambda n=n: run_theirs(n)) / n)
        theirs_s = statistics.median(t_theirs)
        results[f"{n}_images"] = {
            "latentgen_s_per_image": statistics.median(t_ours),
            "latentgen_layout_off_s_per_image": statistics.median(t_off),
            "latentgen_two_subjects_s_per_image": statistics.median(t_and),
            "latentgen_counted_s_per_image": statistics.median(t_count),
            "diffusers_s_per_image": theirs_s,
            "ratio_latentgen_over_diffusers": statistics.median(t_ours) / theirs_s,
            "ratio_layout_off_over_diffusers": statistics.median(t_off) / theirs_s,
            "ratio_two_subjects_over_diffusers": statistics.median(t_and) / theirs_s,
            "ratio_counted_over_diffusers": statistics.median(t_count) / theirs_s,
            "runs_latentgen": t_ours,
            "runs_latentgen_layout_off": t_off,
            "runs_latentgen_two_subjects": t_and,
            "runs_latentgen_counted": t_count,
            "runs_diffusers": t_theirs,
        }

    cli = [sys.executable, "-m", "latentgen", "generate", "--model", model_arg]
    cli += [
        "--steps",
        str(steps),
        "--guidance",
        str(guidance),
        "--sampler",
        sampler.value,
        "--seed",
        "0",
        "-q",
    ]
    processes = {}
    for prompt, label in ((PROMPT, ""), (AND_PROMPT, "two_subjects_")):
        for n in sizes:
            walls, peaks = [], []
            for i in range(args.repeats):
                out = tmp / f"cli-{n}-{i}"
                argv = [*cli, prompt, "-N", str(n), "--batch-size", str(n), "--out", str(out)]
                wall, peak = run_process(argv)
                walls.append(wall), peaks.append(peak)
                shutil.rmtree(out, ignore_errors=True)
            processes[f"{label}{n}_images"] = {
                "prompt": prompt,
                "wall_s": statistics.median(walls),
                "peak_rss_mib": max(peaks),
                "wall_runs": walls,
            }
    import_s = timed(lambda: subprocess.run([sys.executable, "-c", "import latentgen.api"], check=True))

    report = {
        "model": model_label,
        "image_size": size,
        "steps": steps,
        "sampler": sampler.value,
        "guidance": guidance,
        "layout_strength": base.layout_strength,
        "subject_strength": base.subject_strength,
        "count_strength": base.count_strength,
        "fill_in": base.fill_in,
        "device": "cpu",
        "dtype": "fp32",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "per_image": results,
        "cli_process": processes,
        "import_latentgen_api_s": import_s,
        "repeats": args.repeats,
    }
    (HERE / "generate.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# `make bench`: latentgen vs diffusers StableDiffusionPipeline",
        "",
        f"Model: {model_label}, {size}×{size}, {steps} steps {sampler.value}, CFG {guidance}, CPU fp32, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs. Prompt "
        f"{PROMPT!r}; latentgen at the model's layout guidance strength ({base.layout_strength:g}) and "
        f"fill-in ({'on' if base.fill_in else 'off'}: the open colours and background drawn from the seed) "
        f"and with every guidance and fill-in off (the same computation as diffusers); and latentgen on "
        f"{AND_PROMPT!r}, which "
        f"has no relation to place and names two subjects, at the model's subject guidance strength "
        f"({base.subject_strength:g}; above 0 it costs one more U-Net pass with gradients per step); "
        f"and on {COUNT_PROMPT!r} at the model's count guidance strength ({base.count_strength:g}; a bias "
        "on the cross-attention scores, like layout guidance).",
        "",
        "| images per call | latentgen s/image | latentgen, guidance off | latentgen, two subjects "
        "| latentgen, counted | diffusers s/image "
        "| ratios to diffusers (latentgen / guidance off / two subjects / counted) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        r = results[f"{n}_images"]
        lines.append(
            f"| {n} | {r['latentgen_s_per_image']:.3f} | {r['latentgen_layout_off_s_per_image']:.3f} | "
            f"{r['latentgen_two_subjects_s_per_image']:.3f} | {r['latentgen_counted_s_per_image']:.3f} | "
            f"{r['diffusers_s_per_image']:.3f} | "
            f"{r['ratio_latentgen_over_diffusers']:.2f} / {r['ratio_layout_off_over_diffusers']:.2f} / "
            f"{r['ratio_two_subjects_over_diffusers']:.2f} / {r['ratio_counted_over_diffusers']:.2f} |"
        )
    lines += [
        "",
        "Whole `latentgen generate` processes (start, import, load, generate, write PNGs):",
        "",
        "| prompt | images | wall time (median) | wall time per image | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for key, r in processes.items():
        n = int(key.rsplit("_", 2)[-2])
        lines.append(
            f"| {r['prompt']} | {n} | {r['wall_s']:.2f} s | {r['wall_s'] / n:.3f} s | {r['peak_rss_mib']:.0f} MiB |"
        )
    lines += ["", f"`import latentgen.api` alone: {import_s:.2f} s.", ""]
    (HERE / "generate.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
