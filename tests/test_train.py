"""Training: tiny runs of both stages on a folder made on the spot, resume, tokenizer, export.

Every run here takes about a second: 16×16 images, a factor-2 VAE, a U-Net of two levels.
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from latentgen.errors import ModelLoadError, OutputExistsError, UsageError
from latentgen.train import UNetTrainConfig, VAETrainConfig, export_model, train_unet, train_vae
from latentgen.train.data import caption_words, load_data
from latentgen.train.run import check_resume, load_checkpoint
from latentgen.train.unet import LatentCaptions, build_tokenizer, build_unet, sample_timesteps
from latentgen.world import render_sample, swap_subjects

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}


@pytest.fixture(autouse=True)
def _one_thread():
    """Bitwise comparisons need the same thread count in both runs; one also keeps the machine free."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 pairs of a 16×16 image (one coloured square, left or right) and two true captions."""
    root = tmp_path_factory.mktemp("data")
    for i in range(24):
        colour, side = list(COLOURS)[i % 3], ("left", "right")[i % 2]
        image = Image.new("RGB", (16, 16), "white")
        x = 2 if side == "left" else 9
        ImageDraw.Draw(image).rectangle([x, 5, x + 5, 10], fill=COLOURS[colour])
        image.save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(
            f"a {colour} square\n# a comment\n\na {colour} square on the {side}\n"
        )
    return root


@pytest.fixture(scope="module")
def vae_run(folder, tmp_path_factory):
    torch.set_num_threads(1)
    return train_vae(
        VAETrainConfig.tiny(run_dir=str(tmp_path_factory.mktemp("runs") / "vae"), data=str(folder))
    )


@pytest.fixture(scope="module")
def unet_run(folder, vae_run, tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("runs") / "unet"
    return train_unet(UNetTrainConfig.tiny(run_dir=str(run_dir), vae=str(vae_run), data=str(folder)))


def checkpoint_tensors(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoint" / "state.safetensors"))


def assert_same_state(a, b) -> None:
    """Two runs' checkpoints hold bitwise-equal weights, EMA, optimiser and RNG states."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"
    assert (
        json.loads((a / "checkpoint/state.json").read_text())["step"]
        == json.loads((b / "checkpoint/state.json").read_text())["step"]
    )


# --- data -------------------------------------------------------------------------------------------


def test_folder_data_reads_pairs_skips_comments_and_holds_out(folder):
    train = load_data(str(folder), 0, 0, 16)
    held_out = load_data(str(folder), 0, 0, 16, held_out=True)
    assert len(train) + len(held_out) == 24 and len(held_out) == 2
    assert train.images.shape == (22, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.captions[0] == ["a red square", "a red square on the left"]
    assert train.pixels(torch.arange(3)).min() >= -1 and train.pixels(torch.arange(3)).max() <= 1
    assert caption_words(train.captions) == [
        "a",
        "blue",
        "green",
        "left",
        "on",
        "red",
        "right",
        "square",
        "the",
    ]


def test_folder_data_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match="neither 'world' nor a folder"):
        load_data(str(tmp_path / "missing"), 0, 0, 16)
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")  # no caption file
    with pytest.raises(UsageError, match="at least 2"):
        load_data(str(tmp_path), 0, 0, 16)


# --- tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_keeps_every_word_one_token(tmp_path):
    words = [
        "a",
        "cat",
        "wearing",
        "hat",
        "red",
        "green",
        "blue",
        "left",
        "of",
        "above",
        "below",
        "one",
        "two",
        "three",
        "four",
        "circle",
    ]
    tok = build_tokenizer(words, tmp_path / "tok", max_tokens=32)
    assert tok.model_max_length == 32
    for word in words:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, word
        assert tok.decode(ids).strip() == word
    ids = tok("a red cat wearing a blue hat", padding="max_length", max_length=32)["input_ids"]
    assert len(ids) == 32 and ids[0] == tok.bos_token_id and ids[8] == tok.eos_token_id


def test_tokenizer_keeps_every_world_word_one_token(tmp_path):
    world = pytest.importorskip("latentgen.world")
    if not hasattr(world, "vocabulary"):
        pytest.skip("latentgen.world has no vocabulary() yet")
    words = sorted({w.lower() for w in world.vocabulary()})
    tok = build_tokenizer(words, tmp_path / "tok", max_tokens=32)
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in words)


# --- VAE ----------------------------------------------------------------------------------------------


def test_vae_trains_and_writes_a_scaled_vae(vae_run):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_run / "vae", use_safetensors=True)
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert metrics["held_out_psnr_db"] > 0
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert "held-out PSNR" in (vae_run / "train.log").read_text()


def test_vae_resume_reaches_the_same_state(folder, vae_run, tmp_path):
    cfg = VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), data=str(folder))
    train_vae(cfg, stop_at=2)
    assert json.loads((tmp_path / "vae/checkpoint/state.json").read_text())["step"] == 2
    assert not (tmp_path / "vae" / "vae").exists()
    train_vae(cfg)
    assert_same_state(vae_run, tmp_path / "vae")


def test_ctrl_c_checkpoints_then_resumes_to_the_same_state(folder, vae_run, tmp_path, monkeypatch):
    from latentgen.train import run

    update = run.Progress.update

    def update_then_interrupt(self, step, lr, **values):
        update(self, step, lr, **values)
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C were pressed during step 2

    monkeypatch.setattr(run.Progress, "update", update_then_interrupt)
    cfg = VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), data=str(folder))
    with pytest.raises(KeyboardInterrupt):
        train_vae(cfg)
    assert json.loads((tmp_path / "vae/checkpoint/state.json").read_text())["step"] == 2
    monkeypatch.setattr(run.Progress, "update", update)
    train_vae(cfg)
    assert_same_state(vae_run, tmp_path / "vae")


def test_decoder_finetune_keeps_the_latents_and_their_scale(folder, vae_run, tmp_path):
    from diffusers import AutoencoderKL

    cfg = VAETrainConfig.tiny(
        run_dir=str(tmp_path / "dec"), data=str(folder), init_from=str(vae_run), train_encoder=False, lr=1e-2
    )
    before, after = (AutoencoderKL.from_pretrained(p / "vae") for p in (vae_run, train_vae(cfg)))
    b, a = before.state_dict(), after.state_dict()
    encoder = [k for k in b if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in b if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and all(torch.equal(a[k], b[k]) for k in encoder)
    assert any(not torch.equal(a[k], b[k]) for k in decoder)
    assert after.config.scaling_factor == before.config.scaling_factor


def test_decoder_finetune_needs_a_vae_to_start_from(folder, tmp_path):
    cfg = VAETrainConfig.tiny(run_dir=str(tmp_path / "dec"), data=str(folder), train_encoder=False)
    with pytest.raises(UsageError, match="train_encoder=false needs init_from"):
        train_vae(cfg)
    with pytest.raises(UsageError, match="holds no finished VAE"):
        train_vae(replace(cfg, run_dir=str(tmp_path / "dec2"), init_from=str(tmp_path)))


def test_resume_refuses_another_config(folder, tmp_path):
    cfg = VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), data=str(folder), max_steps=2)
    train_vae(cfg, stop_at=1)
    with pytest.raises(UsageError, match="lr"):
        train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), data=str(folder), max_steps=2, lr=1))
    train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), data=str(folder), max_steps=2, log_every=5))


def test_resume_takes_a_field_newer_than_the_checkpoint_at_its_default(folder, vae_run, tmp_path):
    """A checkpoint written before ``layout_mix`` existed ran at its default; a new value still counts."""
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"), vae=str(vae_run), data=str(folder), max_steps=2
    )
    train_unet(cfg, stop_at=1)
    state_path = tmp_path / "unet/checkpoint/state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["layout_mix"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="layout_mix: '' → 'pair=1'"):
        check_resume(load_checkpoint(tmp_path / "unet"), replace(cfg, layout_mix="pair=1"))
    train_unet(cfg)
    assert json.loads(state_path.read_text())["step"] == 2


def test_layout_mix_is_checked_before_any_data_is_made(folder, vae_run, tmp_path):
    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "u"), vae=str(vae_run), data=str(folder))
    with pytest.raises(UsageError, match="layout_mix 'pair=1' weighs the world's layouts; data .* has none"):
        train_unet(replace(cfg, layout_mix="pair=1"))
    with pytest.raises(UsageError, match="'pear=1': expected NAME=WEIGHT"):
        train_unet(replace(cfg, data="world", layout_mix="pear=1"))
    assert not (tmp_path / "u").exists()
    with pytest.raises(UsageError, match="folder data has none: drop it"):
        load_data(str(folder), 0, 0, 16, layout_mix="pair=1")
    pairs = load_data("world", 6, 0, 16, layout_mix="pair=1")
    assert pairs.captions == [render_sample(0, i, mix={"pair": 1.0}).captions for i in range(6)]
    assert pairs.captions != load_data("world", 6, 0, 16).captions


# --- U-Net + text encoder -------------------------------------------------------------------------


def test_unet_attention_only_at_the_levels_asked():
    cfg = UNetTrainConfig.tiny(block_out_channels=(8, 16, 16), attention=(0, 1, 1))
    unet = build_unet(cfg, latent_channels=4, latent_size=8)
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert [type(b).__name__ for b in unet.up_blocks] == [
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
    ]
    every = build_unet(replace(cfg, attention=()), latent_channels=4, latent_size=8)
    assert all(type(b).__name__.startswith("CrossAttn") for b in [*every.down_blocks, *every.up_blocks])
    for bad in [(0, 1), (0, 0, 0)]:
        with pytest.raises(UsageError, match="attention="):
            build_unet(replace(cfg, attention=bad), latent_channels=4, latent_size=8)


def test_timesteps_lean_to_high_noise_when_asked():
    uniform = sample_timesteps(4000, 1000, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(1000, (4000,), generator=torch.Generator().manual_seed(0)))
    for share in (0.0, 0.75, 1.0):
        t = sample_timesteps(4000, 1000, share, torch.Generator().manual_seed(0))
        assert t.min() >= 0 and t.max() <= 999
        assert abs((t >= 500).float().mean().item() - share) < 0.03
    assert (sample_timesteps(4000, 1000, 1.0, torch.Generator().manual_seed(0)) >= 500).all()
    with pytest.raises(UsageError, match="high_noise_share"):
        train_unet(UNetTrainConfig.tiny(run_dir="unused", high_noise_share=1.5))


def test_unet_trains_from_cached_latents(unet_run):
    tensors = checkpoint_tensors(unet_run)
    assert json.loads((unet_run / "checkpoint/state.json").read_text())["step"] == 4
    assert any(k.startswith("ema.unet.") for k in tensors) and any(
        k.startswith("ema.text_encoder.") for k in tensors
    )
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    with safe_open(str(unet_run / "data.safetensors"), "pt") as f:
        channels = VAETrainConfig.tiny().latent_channels
        assert f.get_slice("latent_mean").get_shape() == [16, channels, 8, 8]  # tiny: num_images=16
        assert f.get_slice("caption_start").get_shape() == [17]
    assert "loss" in (unet_run / "train.log").read_text()


def test_unet_resume_reaches_the_same_state(folder, vae_run, unet_run, tmp_path):
    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "unet"), vae=str(vae_run), data=str(folder))
    train_unet(cfg, stop_at=2)
    train_unet(cfg)
    assert_same_state(unet_run, tmp_path / "unet")


def test_unet_sample_grid(folder, vae_run, tmp_path):
    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "unet"), vae=str(vae_run), data=str(folder))
    train_unet(replace(cfg, max_steps=2, sample_every=2))
    grid = Image.open(tmp_path / "unet/samples/step_0000002.png")
    prompts = (tmp_path / "unet/samples/step_0000002.txt").read_text().splitlines()
    assert grid.size == (16 * len(prompts), 16)


def test_diffusion_loss_targets_match_diffusers():
    from diffusers import DDPMScheduler

    from latentgen.train.unet import diffusion_errors, noise_schedule_config

    sched = DDPMScheduler.from_config(noise_schedule_config(UNetTrainConfig()))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 300, 600, 900, 999])
    ac = sched.alphas_cumprod[t]
    assert diffusion_errors(noise, latents, noise, ac, "epsilon", 5.0).mean() == 0
    v = sched.get_velocity(latents, noise, t)
    assert diffusion_errors(v, latents, noise, ac, "v_prediction", 5.0).mean() < 1e-12
    # min-SNR-γ weighs the clean latents' error as min(SNR, γ) whatever the U-Net predicts
    x0_err = torch.randn(6, 4, 8, 8, generator=g)
    a, s = ac.sqrt()[:, None, None, None], (1 - ac).sqrt()[:, None, None, None]
    eps_loss = diffusion_errors(noise - a / s * x0_err, latents, noise, ac, "epsilon", 5.0).mean()
    v_loss = diffusion_errors(v - x0_err / s, latents, noise, ac, "v_prediction", 5.0).mean()
    assert eps_loss.item() == pytest.approx(v_loss.item(), rel=1e-4)


def test_unet_epsilon_prediction_exports_its_prediction_type(folder, vae_run, tmp_path):
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"), vae=str(vae_run), data=str(folder), max_steps=2
    )
    train_unet(replace(cfg, prediction_type="epsilon", snr_gamma=5.0))
    out = export_model(tmp_path / "unet", tmp_path / "model")
    assert json.loads((out / "scheduler/scheduler_config.json").read_text())["prediction_type"] == "epsilon"
    with pytest.raises(UsageError, match="prediction_type"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "other"), prediction_type="sample"))


# --- export -------------------------------------------------------------------------------------------


def test_export_writes_a_diffusers_folder_that_reloads(unet_run, tmp_path):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = export_model(
        unet_run,
        tmp_path / "model",
        steps=30,
        guidance=4.0,
        inpaint_steps=40,
        layout_strength=5.0,
        family="builtin",
    )
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert index["safety_checker"] == [None, None]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    for config in out.glob("*/config.json"):  # no path of the training machine (the run's vae/)
        assert "_name_or_path" not in json.loads(config.read_text()), config
    sched = json.loads((out / "scheduler/scheduler_config.json").read_text())
    assert sched["latentgen_default_steps"] == 30 and sched["latentgen_default_guidance"] == 4.0
    assert sched["latentgen_default_sampler"] == "dpm-solver" and sched["beta_schedule"] == "scaled_linear"
    assert sched["latentgen_inpaint_steps"] == 40 and "latentgen_inpaint_guidance" not in sched
    assert sched["latentgen_default_layout_strength"] == 5.0
    assert sched["prediction_type"] == "v_prediction" and sched["num_train_timesteps"] == 1000

    unet = UNet2DConditionModel.from_pretrained(out / "unet", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder", use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    DPMSolverMultistepScheduler.from_pretrained(out / "scheduler")
    for weights in out.rglob("*.safetensors"):  # stored as fp16 (from_pretrained may upcast)
        assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float16}
    assert text_encoder.config.max_position_embeddings == tokenizer.model_max_length == 16
    assert vae.config.scaling_factor != 0.18215  # measured, not the SD default
    # the U-Net weights are the EMA ones, rounded to fp16
    ema = checkpoint_tensors(unet_run)["ema.unet.conv_in.weight"]
    assert torch.equal(unet.conv_in.weight, ema.half().to(unet.dtype))
    extra = json.loads((out / "latentgen.json").read_text())
    assert extra["family"] == "builtin" and "square" in extra["vocabulary"]

    with pytest.raises(OutputExistsError):
        export_model(unet_run, out)


def test_export_loads_through_the_latentgen_loader(unet_run, tmp_path):
    from latentgen import GenerationRequest, Pipeline
    from latentgen.loader import load_model

    out = export_model(unet_run, tmp_path / "model", family="builtin")
    model = load_model(out, device="cpu", dtype="fp32")
    assert model.source.default_size == 16 and model.source.max_tokens == 16
    assert model.source.defaults.sampler.value == "dpm-solver"
    assert model.source.defaults.layout_strength == 0.0  # off unless the export says
    assert model.source.defaults.subject_strength == 0.0
    assert model.source.defaults.count_strength == 0.0
    assert model.source.defaults.guidance_rescale == 0.0
    (gen,) = Pipeline(model).generate(GenerationRequest("a red circle", steps=2, seed=0))
    assert gen.image.size == (16, 16) and gen.model_family == "builtin"
    for kind in ("layout", "subject", "count"):
        with pytest.raises(UsageError, match=f"{kind} strength -1 is invalid"):
            export_model(unet_run, tmp_path / "bad", **{f"{kind}_strength": -1})
        assert not (tmp_path / "bad").exists()
    with pytest.raises(UsageError, match="guidance rescale 1.5 is invalid"):
        export_model(unet_run, tmp_path / "bad", guidance_rescale=1.5)
    assert not (tmp_path / "bad").exists()
    out = export_model(
        unet_run,
        tmp_path / "guided",
        layout_strength=6,
        subject_strength=80,
        count_strength=3,
        guidance_rescale=0.7,
    )
    defaults = load_model(out, device="cpu", dtype="fp32").source.defaults
    assert (defaults.layout_strength, defaults.subject_strength, defaults.count_strength) == (6.0, 80.0, 3.0)
    assert defaults.guidance_rescale == 0.7


def test_export_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(UsageError, match="not a U-Net training run"):
        export_model(tmp_path, tmp_path / "model")


# --- the world ----------------------------------------------------------------------------------------


def test_vae_and_unet_train_on_the_world(tmp_path):
    world = pytest.importorskip("latentgen.world")
    if not hasattr(world, "render_sample"):
        pytest.skip("latentgen.world has no render_sample() yet")
    vae = train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), max_steps=2))
    mix = "pair=1,count=0.5"
    unet = train_unet(
        UNetTrainConfig.tiny(run_dir=str(tmp_path / "unet"), vae=str(vae), max_steps=2, layout_mix=mix)
    )
    assert json.loads((tmp_path / "unet/checkpoint/state.json").read_text())["step"] == 2
    # the export says what mix of scenes its weights saw
    record = json.loads((export_model(unet, tmp_path / "model") / "latentgen.json").read_text())["training"]
    assert record["layout_mix"] == mix and record["data"] == "world"


# --- the recipe of the built-in model -----------------------------------------------------------


@pytest.mark.slow
def test_default_recipe_builds_trains_and_exports_under_50_mb(folder, tmp_path):
    """The default configs (the built-in model's recipe) take a step each and export to ≤ 50 MB."""
    vae = train_vae(
        VAETrainConfig(run_dir=str(tmp_path / "vae"), data=str(folder), num_images=0, max_steps=1)
    )
    unet = train_unet(
        UNetTrainConfig(
            run_dir=str(tmp_path / "unet"), vae=str(vae), data=str(folder), num_images=0, max_steps=1
        )
    )
    out = export_model(unet, tmp_path / "model")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size <= 50e6, f"export is {size / 1e6:.1f} MB"


def test_train_cli_runs_a_tiny_vae_and_rejects_unknown_fields(run_cli, tmp_path):
    tiny = {
        "num_images": 16,
        "eval_images": 4,
        "resolution": 16,
        "block_out_channels": "8,16",
        "norm_num_groups": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_every": 2,
    }
    sets = [x for k, v in tiny.items() for x in ("--set", f"{k}={v}")]
    code, out, err = run_cli("train", "vae", "--run", tmp_path / "vae", "--steps", 2, "--threads", 1, *sets)
    assert code == 0, err
    assert (tmp_path / "vae" / "vae" / "config.json").is_file()
    code, _, err = run_cli("train", "vae", "--run", tmp_path / "v2", "--set", "colour=red")
    assert code == 2 and "expected KEY=VALUE with KEY one of" in err
    code, _, err = run_cli("train", "vae", "--run", tmp_path / "v2", "--set", "batch_size=big")
    assert code == 2 and "'big' is not a valid int" in err


def test_init_from_an_export_starts_from_its_weights(folder, unet_run, tmp_path):
    """Training can continue past a finished run (e.g. on a new machine) from the exported model."""
    out = export_model(unet_run, tmp_path / "model")
    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "more"), vae="nowhere", data=str(folder))
    train_unet(replace(cfg, init_from=str(out)), stop_at=0)
    start = checkpoint_tensors(tmp_path / "more")
    exported = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(start["model.unet.conv_in.weight"], exported["conv_in.weight"].float())
    assert torch.equal(start["ema.unet.conv_in.weight"], exported["conv_in.weight"].float())
    text = load_file(str(out / "text_encoder" / "model.safetensors"))
    key = next(k for k in text if k.endswith("token_embedding.weight"))
    assert torch.equal(start["model.text_encoder.embeddings.token_embedding.weight"], text[key].float())
    train_unet(replace(cfg, init_from=str(out)))  # and it trains on from there
    first = json.loads((out / "latentgen.json").read_text())["training"]
    record = json.loads((export_model(tmp_path / "more", tmp_path / "model2") / "latentgen.json").read_text())
    assert record["training"]["continues"] == {"init_from": str(out), **first}
    assert record["training"]["total_steps"] == first["steps"] + cfg.max_steps

    wider = replace(cfg, run_dir=str(tmp_path / "wider"), init_from=str(out), block_out_channels=(8, 24))
    with pytest.raises(UsageError, match="does not fit this config's unet"):
        train_unet(wider)
    with pytest.raises(UsageError, match="not a model folder"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "none"), init_from=str(tmp_path)))
    broken = Path(shutil.copytree(out, tmp_path / "broken"))
    (broken / "latentgen.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="latentgen.json is not valid JSON"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "b"), init_from=str(broken)))
    assert not (tmp_path / "b" / "data.safetensors").exists()  # refused before any rendering


def test_text_from_starts_the_text_encoder_alone_and_freeze_text_keeps_it(folder, unet_run, tmp_path):
    """A U-Net can be trained from nothing on an exported model's text encoder (text_from), kept as it
    is (freeze_text): the U-Net starts as a run from nothing does, the text never moves."""
    out = export_model(unet_run, tmp_path / "model")
    exported = {k: v.float() for k, v in load_file(str(out / "text_encoder" / "model.safetensors")).items()}

    def text_of(tensors: dict, prefix: str) -> tuple[dict, dict]:  # (the export's, the run's) by name
        ours = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        assert ours
        return {k: next(v for e, v in exported.items() if e.endswith(k)) for k in ours}, ours

    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "plain"), vae=str(unet_run), data=str(folder))
    train_unet(cfg, stop_at=0)
    plain = checkpoint_tensors(tmp_path / "plain")
    frozen = replace(cfg, run_dir=str(tmp_path / "frozen"), text_from=str(out), freeze_text=True)
    train_unet(frozen, stop_at=0)
    start = checkpoint_tensors(tmp_path / "frozen")
    theirs, ours = text_of(start, "model.text_encoder.")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    unet_keys = [k for k in plain if k.startswith("model.unet.")]
    assert all(torch.equal(start[k], plain[k]) for k in unet_keys)  # the U-Net from the seed

    train_unet(frozen)
    end = checkpoint_tensors(tmp_path / "frozen")
    for prefix in ("model.text_encoder.", "ema.text_encoder."):
        theirs, ours = text_of(end, prefix)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), prefix
    assert not all(torch.equal(end[k], start[k]) for k in unet_keys)  # the U-Net trained
    record = json.loads((export_model(tmp_path / "frozen", tmp_path / "m2") / "latentgen.json").read_text())
    assert record["training"]["text_from"] == str(out) and record["training"]["freeze_text"] is True

    trained = replace(frozen, run_dir=str(tmp_path / "trained"), freeze_text=False)
    train_unet(trained)
    both = checkpoint_tensors(tmp_path / "trained")
    theirs, ours = text_of(both, "model.text_encoder.")
    assert not all(torch.equal(ours[k], theirs[k]) for k in ours)  # without freeze_text it trains

    def optimised(tensors: dict) -> int:  # parameters with optimiser state ("optim.<index>.<name>")
        return len({k.split(".")[1] for k in tensors if k.startswith("optim.")})

    assert optimised(end) == sum(1 for k in plain if k.startswith("model.unet.")) < optimised(both)

    with pytest.raises(UsageError, match="text_from .* cannot be combined with init_from"):
        train_unet(replace(frozen, run_dir=str(tmp_path / "both"), init_from=str(out)))
    with pytest.raises(UsageError, match="text_from .* is not a model folder"):
        train_unet(replace(frozen, run_dir=str(tmp_path / "none"), text_from=str(tmp_path)))
    with pytest.raises(UsageError, match="freeze_text cannot be combined with place_weight"):
        train_unet(replace(frozen, run_dir=str(tmp_path / "place"), data="world", place_weight=1.0))
    assert not (tmp_path / "both").exists() and not (tmp_path / "none" / "data.safetensors").exists()
    assert not (tmp_path / "place").exists()


def test_prompt_repeat_trains_on_repeated_captions_and_grows_the_positions(folder, unet_run, tmp_path):
    """A model can be continued reading each caption twice (prompt_repeat=2): the init's text encoder
    gains positions (copies of its last), captions are tokenized doubled, the export says so."""
    from latentgen.loader import load_model

    out = export_model(unet_run, tmp_path / "model")  # max_tokens 16
    run = tmp_path / "twice"
    cfg = UNetTrainConfig.tiny(
        run_dir=str(run), vae="nowhere", data=str(folder), init_from=str(out), prompt_repeat=2, max_tokens=32
    )
    train_unet(cfg, stop_at=0)
    positions = checkpoint_tensors(run)["model.text_encoder.embeddings.position_embedding.weight"]
    text = load_file(str(out / "text_encoder" / "model.safetensors"))
    init = next(v for k, v in text.items() if k.endswith("position_embedding.weight")).float()
    assert positions.shape[0] == 32 and init.shape[0] == 16
    assert torch.equal(positions[:16], init) and torch.equal(positions[16:], init[-1:].expand(16, -1))

    tok = CLIPTokenizer.from_pretrained(run / "tokenizer")
    data = LatentCaptions.load(run / "data.safetensors")
    captions = {line for f in folder.glob("*.txt") for line in f.read_text().splitlines() if line[:1] == "a"}
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    rows = [[t for t in row.tolist() if t not in special] for row in data.tokens]
    assert rows[0] == []  # the unconditional caption stays empty
    for ids in rows[1:]:
        half = len(ids) // 2
        assert ids[:half] == ids[half:] and tok.decode(ids[:half]).strip() in captions

    train_unet(cfg)
    model_dir = export_model(run, tmp_path / "model2")
    assert json.loads((model_dir / "latentgen.json").read_text())["prompt_repeat"] == 2
    assert load_model(model_dir, device="cpu", dtype="fp32").source.prompt_repeat == 2
    assert "prompt_repeat" not in json.loads((out / "latentgen.json").read_text())

    with pytest.raises(UsageError, match="prompt_repeat 0 must be 1 or more"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "r0"), prompt_repeat=0))
    with pytest.raises(UsageError, match="cannot be combined with place_weight"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "r1"), data="world", place_weight=1.0))
    with pytest.raises(UsageError, match=r"more max_tokens \(16\)"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "r2"), prompt_repeat=1, max_tokens=8))


def test_init_from_grows_transformer_layers_that_start_as_the_identity(folder, unet_run, tmp_path):
    """More transformer layers than the init model has: the grown U-Net first predicts exactly what
    the old one does, then its new layers train; any other missing weight is still refused."""
    from latentgen.loader import load_model

    out = export_model(unet_run, tmp_path / "model")
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "grown"), vae="nowhere", data=str(folder), init_from=str(out),
        transformer_layers=(1, 3),
    )  # fmt: skip
    train_unet(cfg, stop_at=0)
    old = load_model(str(out)).unet
    new = load_model(str(export_model(tmp_path / "grown", tmp_path / "grown_model"))).unet
    assert new.config.transformer_layers_per_block == [1, 3]  # the level and the middle block
    grown = sum(p.numel() for p in new.parameters()) - sum(p.numel() for p in old.parameters())
    assert grown > 0
    torch.manual_seed(0)
    x, emb = torch.randn(2, old.config.in_channels, 4, 4), torch.randn(2, 16, 16)
    with torch.no_grad():
        before = old(x, torch.tensor([10, 900]), encoder_hidden_states=emb).sample
        after = new(x, torch.tensor([10, 900]), encoder_hidden_states=emb).sample
    assert torch.equal(before, after)

    train_unet(cfg)  # the new layers learn: their output projections leave zero
    state = checkpoint_tensors(tmp_path / "grown")
    assert state["model.unet.mid_block.attentions.0.transformer_blocks.2.ff.net.2.weight"].abs().sum() > 0

    with pytest.raises(UsageError, match=r"transformer_layers=\(1, 2, 2\) needs one entry .* per"):
        train_unet(replace(cfg, run_dir=str(tmp_path / "bad"), transformer_layers=(1, 2, 2)))
    fewer = replace(cfg, run_dir=str(tmp_path / "fewer"), init_from=str(tmp_path / "grown_model"))
    with pytest.raises(UsageError, match="does not fit this config's unet"):
        train_unet(replace(fewer, transformer_layers=()))  # dropping layers is not growing


def test_object_mask_marks_what_differs_from_the_frame():
    from latentgen.train.vae import object_mask

    pixels = torch.full((1, 3, 8, 8), -0.5)
    pixels[0, 0, 2:4, 3:6] = 0.9  # a red-ish object
    pixels[0, :, 6, 6] = -0.45  # a shade too close to the background to count
    mask = object_mask(pixels)
    assert mask.shape == (1, 1, 8, 8)
    assert mask.sum() == 6 and mask[0, 0, 2:4, 3:6].eq(1).all()


def test_vae_round_trips_are_judged_on_world_data(tmp_path):
    from latentgen.train.data import load_data
    from latentgen.train.vae import build_vae, reconstruction_judged

    held_out = load_data("world", 4, 0, 64, held_out=True)
    cfg = VAETrainConfig.tiny()
    untrained = build_vae(cfg)
    assert reconstruction_judged(untrained, held_out) == 0.0  # an untrained VAE shows nothing asked for

    class Identity:  # a perfect VAE: the ceiling is the judge's own accuracy on renders, 100%
        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

        def decode(self, z):
            return SimpleNamespace(sample=z)

    assert reconstruction_judged(Identity(), held_out) == 1.0


# --- grounding: words to boxes ----------------------------------------------------------------------


def test_box_coverage_is_the_share_of_each_cell_a_box_covers():
    from latentgen.train.grounding import box_coverage

    left_half = torch.tensor([0.0, 0.0, 0.5, 1.0])
    assert box_coverage(left_half, 2).tolist() == [1.0, 0.0, 1.0, 0.0]  # row-major: top row first
    top_quarter_cell = torch.tensor([0.0, 0.0, 0.25, 0.25])
    assert box_coverage(top_quarter_cell, 2).tolist() == [0.25, 0.0, 0.0, 0.0]
    assert box_coverage(torch.full((4,), float("nan")), 4).sum() == 0  # no object: covers nothing


def test_word_masks_give_a_count_the_union_of_its_objects():
    from latentgen.train.grounding import word_masks

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [float("nan")] * 4]])
    tokens = torch.tensor([[0, 1, 2, 3]])  # none, the first, the second, both
    masks = word_masks(tokens, boxes, 2)[0]
    assert masks.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]]


def test_grounding_loss_is_zero_inside_the_box_one_outside_and_ignores_other_words():
    from latentgen.train.grounding import grounding_loss

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0]]])  # the left half of a 2x2 grid: cells 0 and 2
    tokens = torch.tensor([[0, 1]])  # token 1 names the object; token 0 names nothing
    inside = torch.tensor([[[0.9, 0.5], [0.0, 0.0], [0.1, 0.5], [0.0, 0.0]]])  # [B, N, L]
    outside = torch.tensor([[[0.1, 0.0], [0.4, 0.5], [0.0, 0.0], [0.5, 0.5]]])
    assert grounding_loss([inside], tokens, boxes).item() == pytest.approx(0.0)
    assert grounding_loss([outside], tokens, boxes).item() == pytest.approx(1.0)
    assert grounding_loss([inside, outside], tokens, boxes).item() == pytest.approx(0.5)  # mean of layers
    assert grounding_loss([outside], torch.zeros_like(tokens), boxes).item() == 0.0  # nothing grounded


def test_capturing_cross_attention_keeps_the_unet_output_and_records_each_layer():
    from latentgen.train.grounding import capture_cross_attention

    cfg = UNetTrainConfig.tiny(block_out_channels=(8, 16, 16), attention=(0, 1, 1), text_hidden=16)
    torch.manual_seed(0)
    unet = build_unet(cfg, latent_channels=4, latent_size=8).eval()
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 16)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
        maps, switch = capture_cross_attention(unet)
        switch["active"] = True
        after = unet(x, t, encoder_hidden_states=text).sample
    assert torch.allclose(before, after, atol=1e-5)
    # cross-attention at 4x4 and 2x2, down and up, mid block at 2x2: one [B, N, L] map per layer
    assert sorted({m.shape[1] for m in maps}) == [4, 16]
    assert all(m.shape[0] == 2 and m.shape[2] == 5 for m in maps)
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in maps)  # softmax over the words
    switch["active"] = False
    maps.clear()
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=text)
    assert maps == []


def test_grounding_loss_trains_attention_into_the_boxes():
    """A few optimiser steps on the grounding loss alone move each word's attention into its box."""
    from latentgen.train.grounding import capture_cross_attention, grounding_loss

    cfg = UNetTrainConfig.tiny(block_out_channels=(8, 16, 16), attention=(0, 1, 1), text_hidden=16)
    torch.manual_seed(0)
    unet = build_unet(cfg, latent_channels=4, latent_size=8)
    maps, switch = capture_cross_attention(unet)
    switch["active"] = True
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 3, 16, generator=gen)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]).expand(4, 2, 4)
    tokens = torch.tensor([[0, 1, 2]]).expand(4, 3)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        maps.clear()
        unet(x, torch.full((4,), 500), encoder_hidden_states=text)
        loss = grounding_loss(maps, tokens, boxes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_world_runs_cache_grounding_targets_and_train_with_them(tmp_path):
    vae = train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), max_steps=2))
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"),
        vae=str(vae),
        max_steps=3,
        ground_weight=0.1,
        layout_mix="pair=1",
        max_tokens=24,  # the world's longest caption fits: none is cut, so every one is grounded
    )
    train_unet(cfg, stop_at=1)
    train_unet(cfg)  # resumed
    whole = train_unet(replace(cfg, run_dir=str(tmp_path / "whole")))
    assert_same_state(tmp_path / "unet", whole)
    assert "ground" in (whole / "train.log").read_text()
    data = load_file(str(whole / "data.safetensors"))
    assert data["boxes"].shape == (16, 4, 4) and data["token_objects"].shape == (64, 24)  # 4 captions each
    # pairs: every caption names its two objects, each by its own bit
    assert ((data["token_objects"] == 1).any(1) & (data["token_objects"] == 2).any(1)).all()
    assert data["boxes"][:, 2:].isnan().all() and not data["boxes"][:, :2].isnan().any()


@pytest.mark.parametrize(
    "name",
    ["ground_weight", "order_weight", "place_weight", "end_place_weight", "kind_weight", "colour_weight"],
)
def test_world_only_losses_need_world_data(folder, vae_run, tmp_path, name):
    cfg = UNetTrainConfig.tiny(run_dir=str(tmp_path / "u"), vae=str(vae_run), data=str(folder))
    with pytest.raises(UsageError, match=f"{name} 0.1 needs data 'world'"):
        train_unet(replace(cfg, **{name: 0.1}))
    with pytest.raises(UsageError, match=f"{name} -1.0 needs"):
        train_unet(replace(cfg, data="world", **{name: -1.0}))
    assert not (tmp_path / "u").exists()


def test_order_loss_is_the_margin_for_an_order_blind_model_and_zero_past_it():
    from latentgen.train.unet import order_loss

    true = torch.tensor([0.1, 0.2], requires_grad=True)
    assert order_loss(true, true.detach().clone(), 0.2).item() == pytest.approx(0.2)  # blind: gap 0
    assert order_loss(true, torch.tensor([0.13, 0.26]), 0.2).item() == 0.0  # 30% worse: past the margin
    swapped = torch.tensor([0.11, 0.2], requires_grad=True)
    order_loss(true, swapped, 0.2).backward()
    assert (swapped.grad < 0).all()  # it pushes the false caption's error up...
    assert (true.grad > 0).all()  # ...and the true caption's down


def test_world_runs_train_with_the_order_loss(tmp_path):
    vae = train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), max_steps=2))
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"), vae=str(vae), max_steps=3, layout_mix="pair=1", max_tokens=24,
        order_weight=1.0, order_min_t=0, uncond_prob=0.0,
    )  # fmt: skip
    train_unet(cfg, stop_at=1)
    train_unet(cfg)
    assert_same_state(tmp_path / "unet", train_unet(replace(cfg, run_dir=str(tmp_path / "whole"))))
    assert " order " in (tmp_path / "whole" / "train.log").read_text()
    cached = LatentCaptions.load(tmp_path / "whole" / "data.safetensors")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "whole" / "tokenizer")
    text = tokenizer.batch_decode(cached.tokens, skip_special_tokens=True)
    # every caption stating a direction has its swapped twin tokenized beside it
    pairs = [(text[r], text[s]) for r, s in enumerate(cached.swap_rows.tolist()) if s >= 0]
    assert pairs and all(swap_subjects(a) == b for a, b in pairs)


def test_place_loss_is_zero_at_the_centres_and_averages_a_count():
    from latentgen.train.grounding import place_loss

    nan = float("nan")
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [nan, nan, nan, nan]]])
    tokens = torch.tensor([[0, 1, 2, 3]])  # nothing; object 0; object 1; both (a count)
    right = torch.tensor([[[9.0, 9.0], [0.25, 0.25], [0.75, 0.75], [0.5, 0.5]]])
    assert place_loss(right, tokens, boxes).item() == pytest.approx(0.0)  # token 0 is not scored
    wrong = right.clone()
    wrong[0, 2] = torch.tensor([0.75, 0.25])  # object 1 predicted half a canvas too high
    assert place_loss(wrong, tokens, boxes).item() == pytest.approx(0.25 / 3)
    assert place_loss(right, torch.zeros_like(tokens), boxes).item() == 0.0  # nothing grounded


def test_end_place_loss_maps_each_named_kind_to_its_objects_centre():
    from latentgen.train.grounding import end_place_loss

    nan = float("nan")
    # objects: 0 top left, 1 bottom right, 2 bottom left; none named by token 0
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0], [nan] * 4]])
    tokens = torch.tensor([[0, 1, 2, 6]])  # nothing; object 0; object 1; objects 1 and 2 (a count)
    kinds = torch.tensor([[-1, 0, 2, 2]])  # the words' kinds: none, kind 0, kind 2, kind 2 (plural)
    right = torch.full((1, 4, 2), 9.0)  # kinds 1 and 3 are not named: any guess goes
    right[0, 0] = torch.tensor([0.25, 0.25])
    right[0, 2] = torch.tensor([0.5, 0.75])  # kind 2: the mean over objects 1 and 2
    assert end_place_loss(right, kinds, tokens, boxes).item() == pytest.approx(0.0)
    wrong = right.clone()
    wrong[0, 0] = torch.tensor([0.25, 0.75])  # kind 0 put half a canvas too low
    assert end_place_loss(wrong, kinds, tokens, boxes).item() == pytest.approx(0.25 / 2)
    # the same words with the layout mirrored: a different target, so the word order alone cannot fit
    flipped = boxes[..., [0, 3, 2, 1]].clone()
    flipped[..., 1], flipped[..., 3] = 1 - boxes[..., 3], 1 - boxes[..., 1]
    assert end_place_loss(right, kinds, tokens, flipped).item() > 0.1
    assert end_place_loss(right, torch.full_like(kinds, -1), tokens, boxes).item() == 0.0  # no kinds


def test_place_loss_teaches_a_causal_text_encoder_the_side_of_the_word_after_the_relation(tmp_path):
    """The second noun of "a circle above a square" and "a circle below a square" has the same
    prefix but one word; a few steps of the place loss alone make its state say which side it is on."""
    from latentgen.train.grounding import place_loss
    from latentgen.train.unet import build_text_encoder

    cfg = UNetTrainConfig.tiny(max_tokens=8)
    tokenizer = build_tokenizer(["a", "circle", "square", "above", "below"], tmp_path / "tok", 8)
    torch.manual_seed(0)
    encoder = build_text_encoder(cfg, tokenizer)
    head = torch.nn.Linear(cfg.text_hidden, 2)
    captions = ["a circle above a square", "a circle below a square"]
    ids = tokenizer(captions, padding="max_length", max_length=8, return_tensors="pt").input_ids
    # words 1-5 are tokens 1-5: "circle" names object 0, "square" object 1 (bit masks)
    tokens = torch.tensor([[0, 0, 1, 0, 0, 2, 0, 0]]).expand(2, 8)
    top, bottom = [0.4, 0.0, 0.6, 0.2], [0.4, 0.8, 0.6, 1.0]
    boxes = torch.tensor([[top, bottom], [bottom, top]])
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)

    def square_y() -> list[float]:
        return head(encoder(ids)[0])[:, 5, 1].tolist()

    before = square_y()
    for _ in range(60):
        loss = place_loss(head(encoder(ids)[0]), tokens, boxes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = square_y()
    assert abs(before[0] - before[1]) < 0.1
    assert after[0] == pytest.approx(0.9, abs=0.1) and after[1] == pytest.approx(0.1, abs=0.1), after
    # the first noun cannot know (a causal encoder): it settles between the two
    circle = head(encoder(ids)[0])[:, 2, 1].tolist()
    assert circle[0] == pytest.approx(circle[1]) and circle[0] == pytest.approx(0.5, abs=0.1)


def test_world_runs_train_with_the_place_loss_and_export_without_its_head(tmp_path):
    vae = train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), max_steps=2))
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"), vae=str(vae), max_steps=3, layout_mix="pair=1", max_tokens=24,
        place_weight=1.0, end_place_weight=1.0,
    )  # fmt: skip
    train_unet(cfg, stop_at=1)
    train_unet(cfg)
    whole = train_unet(replace(cfg, run_dir=str(tmp_path / "whole")))
    assert_same_state(tmp_path / "unet", whole)
    log = (whole / "train.log").read_text()
    assert " place " in log and " end_place " in log
    tensors = load_checkpoint(whole).tensors
    assert any(k.startswith("model.place_head.") for k in tensors)
    assert any(k.startswith("model.end_place_head.") for k in tensors)
    from transformers import CLIPTokenizer

    from latentgen.train.unet import _token_kinds
    from latentgen.world.scene import KINDS

    tokenizer = CLIPTokenizer.from_pretrained(whole / "tokenizer")
    table = _token_kinds(tokenizer)  # every kind word, singular and plural, is found
    ids = tokenizer("a circle and two hats above a star", add_special_tokens=False).input_ids
    assert [KINDS[k] if k >= 0 else None for k in table[ids].tolist()] == [
        None, "circle", None, None, "hat", None, None, "star",
    ]  # fmt: skip
    assert (table >= 0).sum().item() == 2 * len(KINDS)
    out = export_model(whole, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "scheduler", "text_encoder", "tokenizer", "unet", "vae",
    ]  # fmt: skip


def test_kind_targets_split_each_cell_by_kind_and_the_loss_is_least_for_the_true_map():
    from latentgen.train.grounding import kind_loss, kind_targets

    nan = float("nan")
    # a circle (kind 0) filling the left column of a 2x2 grid, a hat (kind 2) on the top-right cell
    # and a cat (kind 1) under half of it, overlapping the hat as a worn hat does
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5], [0.5, 0.0, 1.0, 0.25], [nan] * 4]])
    kinds = torch.tensor([[0, 2, 1, -1]], dtype=torch.int8)
    target = kind_targets(kinds, boxes, 2, 3)[0]  # [4 classes, 4 cells], cells row-major
    expected = torch.tensor([
        [1.0, 0.0, 1.0, 0.0],  # circle
        [0.0, 1 / 3, 0.0, 0.0],  # cat: half the cell, shared with the hat's whole
        [0.0, 2 / 3, 0.0, 0.0],  # hat
        [0.0, 0.0, 0.0, 1.0],  # background: the bottom-right cell
    ])  # fmt: skip
    torch.testing.assert_close(target, expected)
    assert kind_targets(torch.full((1, 4), -1, dtype=torch.int8), boxes, 2, 3)[0, 3].eq(1).all()  # empty

    right = (target * 50).log().clamp(min=-50).view(1, 4, 2, 2)  # logits whose softmax is the target
    wrong = right[:, [1, 0, 2, 3]]  # circles and cats swapped
    assert kind_loss(right, kinds, boxes).item() < 0.65  # the hat cell's own entropy, ~0.64
    assert kind_loss(wrong, kinds, boxes).item() > 20


def test_colour_targets_give_objects_their_colours_and_the_rest_the_background_colour():
    from latentgen.train.grounding import colour_loss, colour_targets

    nan = float("nan")
    # on a 2x2 grid with a blue (2) background: a red (0) box on the left column, a green (1) hat on
    # the top-right cell over half of a red cat, as a worn hat does
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5], [0.5, 0.0, 1.0, 0.25], [nan] * 4]])
    colours = torch.tensor([[0, 1, 0, -1]], dtype=torch.int8)
    backgrounds = torch.tensor([2], dtype=torch.int8)
    target = colour_targets(colours, backgrounds, boxes, 2, 4)[0]  # [4 colours, 4 cells], row-major
    expected = torch.tensor([
        [1.0, 1 / 3, 1.0, 0.0],  # red: the left column, and the cat's share of the top right
        [0.0, 2 / 3, 0.0, 0.0],  # green: the hat
        [0.0, 0.0, 0.0, 1.0],  # blue: the background, the bottom-right cell
        [0.0, 0.0, 0.0, 0.0],  # a colour nothing has
    ])  # fmt: skip
    torch.testing.assert_close(target, expected)
    empty = colour_targets(torch.full((1, 4), -1, dtype=torch.int8), backgrounds, boxes, 2, 4)[0]
    assert empty[2].eq(1).all() and empty.sum().item() == 4  # nothing drawn: all background

    right = (target * 50).log().clamp(min=-50).view(1, 4, 2, 2)  # logits whose softmax is the target
    swapped = right[:, [1, 0, 2, 3]]  # red and green swapped: every object in the other's colour
    # the mean over cells is a quarter of the top-right cell's entropy (0.64), the rest are certain
    assert colour_loss(right, colours, backgrounds, boxes).item() == pytest.approx(0.64 / 4, abs=0.01)
    assert colour_loss(swapped, colours, backgrounds, boxes).item() > 20


def test_world_runs_train_with_the_kind_and_colour_losses_and_export_without_their_heads(tmp_path):
    from latentgen.world import COLOUR_NAMES, KINDS, render_sample

    vae = train_vae(VAETrainConfig.tiny(run_dir=str(tmp_path / "vae"), max_steps=2))
    cfg = UNetTrainConfig.tiny(
        run_dir=str(tmp_path / "unet"), vae=str(vae), max_steps=3, layout_mix="pair=0.5,count=0.5",
        kind_weight=0.1, colour_weight=0.1,
    )  # fmt: skip
    train_unet(cfg, stop_at=1)
    train_unet(cfg)  # resumed
    whole = train_unet(replace(cfg, run_dir=str(tmp_path / "whole")))
    assert_same_state(tmp_path / "unet", whole)
    log = (whole / "train.log").read_text()
    assert " kind " in log and " colour " in log
    tensors = load_checkpoint(whole).tensors
    assert any(k.startswith("model.kind_head.") for k in tensors)
    assert any(k.startswith("model.colour_head.") for k in tensors)
    data = load_file(str(whole / "data.safetensors"))
    mix = {"pair": 0.5, "count": 0.5}
    for i in (0, 7):  # the cached kinds and colours are the rendered scene's, in the boxes' order
        scene = render_sample(cfg.data_seed, i, mix=mix).scene
        none = [-1] * (4 - len(scene.objects))
        assert data["kinds"][i].tolist() == [KINDS.index(o.kind) for o in scene.objects] + none
        assert data["colours"][i].tolist() == [COLOUR_NAMES.index(o.colour) for o in scene.objects] + none
        assert data["backgrounds"][i].item() == COLOUR_NAMES.index(scene.background)
    out = export_model(whole, tmp_path / "model")
    assert not any("_head" in p.name for p in out.rglob("*"))
    exported = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not any(k.startswith(("kind_head", "colour_head")) for k in exported)
