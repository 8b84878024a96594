"""Training for latentgen's latent diffusion models: two resumable, seeded stages and an export.

    from latentgen.train import VAETrainConfig, UNetTrainConfig, train_vae, train_unet, export_model

    train_vae(VAETrainConfig(run_dir="runs/vae"))                        # 1. the VAE
    train_unet(UNetTrainConfig(run_dir="runs/unet", vae="runs/vae"))     # 2. U-Net + text encoder
    export_model("runs/unet", "out/model")                               # 3. diffusers folder, fp16

Each stage resumes from its run folder's last checkpoint when called again with the same config, and
reaches the same weights bit for bit. Ctrl-C (or SIGTERM) checkpoints after the current step and
raises ``KeyboardInterrupt``. Data is ``"world"`` (the built-in renderer) or a folder of
``name.png`` + ``name.txt`` pairs (one caption per line).

The configs' defaults are the built-in model's recipe (64×64 images):

- VAE: ``AutoencoderKL``, factor 4 (64×64×3 → 16×16×8), 2.7M parameters; batch 32, 2,000 steps.
- U-Net: 12.7M parameters on 16×16 latents, attention (self and text) at 8×8, 4×4 and 2×2, plus
  the pooled text in the timestep embedding; CLIP text encoder (256 wide, 4 layers, 24 tokens) from
  scratch, 2.3M; v-prediction; batch 32, 15,000 steps; EMA. The shipped model then continues that
  run in further cycles, each from the last one's export (``init_from``) on fresh renders with
  ``high_noise_share=0.75``, the last of them with a second transformer layer grown into every
  attention block but the 16×16 level's (``transformer_layers``; U-Net 17.1M):
  ``scripts/train-builtin-release10`` lists them. ``scripts/train-builtin`` is the shorter recipe:
  five cycles of 6,000 steps on 20,000 renders each, with the kind loss, then the kind and colour
  losses, on (``kind_weight``, ``colour_weight``).
- Export: about 35 MB in fp16 (44 MB grown).
"""

from latentgen.train.export import export_model
from latentgen.train.unet import UNetTrainConfig, train_unet
from latentgen.train.vae import VAETrainConfig, train_vae

__all__ = ["UNetTrainConfig", "VAETrainConfig", "export_model", "train_unet", "train_vae"]
