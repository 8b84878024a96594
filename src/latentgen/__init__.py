"""latentgen: text-to-image with latent diffusion, on your own machine.

The public API lives in :mod:`latentgen.api` and is re-exported here lazily, so that importing the
package (as the CLI does for ``--help``) does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    import importlib

    api = importlib.import_module("latentgen.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'latentgen' has no attribute {name!r}")
