"""Reading the images and masks a user gives: refuse what is not an image, normalise the rest.

Every file is read once: its bytes are hashed (sha256, recorded in the output's metadata so that
``--replay`` can tell whether the file changed) and decoded from memory. Decoding refuses, naming the
file: missing files and folders, files that are not images, truncated images, and decompression bombs
(more than :data:`MAX_PIXELS` pixels, checked from the header before any pixel is decoded).

What is accepted comes out as an 8-bit RGB image the right way up, plus its transparency if it has
any: EXIF orientation applied; palette, grayscale, 16-bit, 32-bit and CMYK images converted;
transparent images flattened onto white with the alpha channel kept apart (it may serve as a mask).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from latentgen.errors import UsageError
from latentgen.request import MAX_SIDE

log = logging.getLogger("latentgen")

MAX_PIXELS = MAX_SIDE * MAX_SIDE  # more than this from a small file is a decompression bomb
MAX_FILE_BYTES = 512 * 2**20
EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class LoadedImage:
    """An image file, decoded and normalised."""

    path: Path  # absolute
    sha256: str  # of the file's bytes
    rgb: Image.Image  # mode "RGB", 8 bits per channel, EXIF orientation applied
    alpha: Image.Image | None  # mode "L" (255 = opaque), only when some pixel is not fully opaque
    notes: tuple[str, ...] = ()  # what normalising did, e.g. "converted from CMYK"

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def load_image(path: str | os.PathLike, what: str = "image") -> LoadedImage:
    """Read, check and normalise the image at ``path``; ``what`` names it in messages ("mask", ...)."""
    path = Path(path).expanduser().absolute()
    data = _read_bytes(path, what)
    image = _decode(data, path, what)
    notes: list[str] = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"used the first of its {image.n_frames} frames")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append(f"applied its EXIF orientation ({orientation})")
    rgb, alpha = _normalise(image, notes)
    if notes:
        log.info("%s %s: %s", what, path, "; ".join(notes))
    return LoadedImage(path, hashlib.sha256(data).hexdigest(), rgb, alpha, tuple(notes))


def load_mask(path: str | os.PathLike) -> LoadedImage:
    """A mask file as a :class:`LoadedImage` whose ``rgb`` is replaced by one channel (mode "L").

    Luminance is the mask (white = repaint); transparent pixels of a mask count as black (keep).
    """
    loaded = load_image(path, "mask")
    gray = np.asarray(loaded.rgb.convert("L"), dtype=np.float32)
    if loaded.alpha is not None:
        gray = gray * (np.asarray(loaded.alpha, dtype=np.float32) / 255.0)
    mask = Image.fromarray(np.round(gray).astype(np.uint8), mode="L")
    return LoadedImage(loaded.path, loaded.sha256, mask, None, loaded.notes)


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (how :func:`load_image` hashes)."""
    return hashlib.sha256(_read_bytes(Path(path), "file")).hexdigest()


# --- helpers -------------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"{what} {path} is a folder; give an image file")
        if size > MAX_FILE_BYTES:
            raise UsageError(
                f"{what} {path} is {size / 2**20:.0f} MiB; the limit is {MAX_FILE_BYTES >> 20} MiB"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise UsageError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None


def _decode(data: bytes, path: Path, what: str) -> Image.Image:
    bomb = f"{what} {path} is refused as a decompression bomb"
    with warnings.catch_warnings():
        # Pillow only warns between its two limits; a warning is as good as a bomb here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise UsageError(f"{bomb}: {width}x{height} pixels, more than the {MAX_PIXELS} allowed")
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UsageError(f"{bomb} ({exc})".splitlines()[0]) from None
        except UnidentifiedImageError:
            raise UsageError(f"{what} {path} is not an image file (no known image format)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UsageError(f"{what} {path} could not be decoded ({exc})".splitlines()[0]) from None
    if image.width < 1 or image.height < 1:
        raise UsageError(f"{what} {path} is empty ({image.width}x{image.height} pixels)")
    return image


def _normalise(image: Image.Image, notes: list[str]) -> tuple[Image.Image, Image.Image | None]:
    """8-bit RGB and, if any pixel is not fully opaque, the alpha channel (mode "L")."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        image = _to_8_bit(image)
        notes.append(f"reduced from {mode} to 8 bits")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("converted from a palette")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
        notes.append(f"converted from {mode}")
    elif mode == "1":
        image = image.convert("L")

    alpha = None
    if "A" in image.getbands() or image.mode in ("RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:
            alpha = None  # an alpha channel that hides nothing
        else:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
            notes.append("has transparency: flattened onto white, alpha kept")
    return image.convert("RGB"), alpha


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images, scaled (not clipped) to 8 bits."""
    values = np.asarray(image).astype(np.float64)
    top = 65535.0  # I;16* and the 32-bit "I" that 16-bit PNGs and TIFFs decode to
    if image.mode == "F":  # float images hold [0, 1] or [0, 255]
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    scaled = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")
