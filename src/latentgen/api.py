"""The library's front door (also re-exported lazily by ``latentgen``)::

from latentgen import load_model, Pipeline, GenerationRequest

model = load_model("builtin")            # or a diffusers folder, or a repo id in the HF cache
pipe = Pipeline(model)
for gen in pipe.generate(GenerationRequest("a cat wearing a hat", seed=1, num_images=4)):
    gen.image.save(...)                  # PIL image; gen.request / gen.model_hash: its metadata
"""

from latentgen.edit import (
    EditJob,
    EditMode,
    EditRequest,
    edit_images,
    img2img,
    inpaint,
    iter_edit,
    prepare_edit,
)
from latentgen.errors import (
    LatentgenError,
    ModelLoadError,
    ModelNotFoundError,
    NonFiniteError,
    UnsafeCheckpointError,
    UsageError,
)
from latentgen.loader import Model, ModelSource, load_model, resolve_model
from latentgen.pipeline import GeneratedImage, Job, Pipeline, Settings
from latentgen.request import GenerationRequest
from latentgen.samplers import Sampler

__all__ = [
    "EditJob",
    "EditMode",
    "EditRequest",
    "GeneratedImage",
    "GenerationRequest",
    "Job",
    "LatentgenError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSource",
    "NonFiniteError",
    "Pipeline",
    "Sampler",
    "Settings",
    "UnsafeCheckpointError",
    "UsageError",
    "edit_images",
    "img2img",
    "inpaint",
    "iter_edit",
    "load_model",
    "prepare_edit",
    "resolve_model",
]
