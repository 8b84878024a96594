"""Writing images: safe names, atomic writes, and never overwriting what a user already has.

Every image is written to a hidden temp file in the target folder and then linked into place, so a
reader (or a crash, even ``kill -9``) never sees a partial or zero-byte PNG, and two processes writing
to one folder never replace each other's files.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from latentgen.errors import LatentgenError, OutputExistsError, UsageError
from latentgen.metadata import png_info
from latentgen.pipeline import GeneratedImage

IMAGE_SUFFIX = ".png"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
DEFAULT_DIR = Path("outputs")


def slug(text: str, max_len: int = 48) -> str:
    """A file-name-safe, bounded slug of a prompt: ASCII letters, digits and single dashes."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    s = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "image"


class OutputPlan:
    """Where the images of one ``generate`` run go: one named file, or a folder of named files."""

    def __init__(self, out: str | os.PathLike | None, num_images: int, overwrite: bool):
        self.overwrite = overwrite
        path = Path(out) if out is not None else DEFAULT_DIR
        self.file: Path | None = None
        if path.suffix.lower() == IMAGE_SUFFIX and not path.is_dir():
            if num_images > 1:
                raise UsageError(
                    f"--out {path} names one file but {num_images} images were asked for; give a folder"
                )
            if path.exists() and not overwrite:
                raise OutputExistsError(f"{path} already exists; pass --overwrite or choose another --out")
            self.file, self.folder = path, path.parent
        elif path.suffix and path.suffix.lower() in (
            ".jpg",
            ".jpeg",
            ".webp",
            ".gif",
            ".bmp",
            ".tif",
            ".tiff",
        ):
            raise UsageError(
                f"--out {path}: latentgen writes PNG (its metadata lives in PNG chunks); use a .png name"
            )
        elif path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is an existing file, not a folder or a .png name")
        else:
            self.folder = path

    def write(self, gen: GeneratedImage) -> Path:
        """Write ``gen`` and return its path."""
        if self.file is not None:
            return save_png(gen, self.file, overwrite=self.overwrite)
        base = f"{slug(gen.request.prompt)}-{gen.request.seed}"
        if self.overwrite:
            return save_png(gen, self.folder / f"{base}{IMAGE_SUFFIX}", overwrite=True)
        for n in range(1, 10_000):
            name = f"{base}{IMAGE_SUFFIX}" if n == 1 else f"{base}-{n}{IMAGE_SUFFIX}"
            try:
                return save_png(gen, self.folder / name, overwrite=False)
            except OutputExistsError:
                continue
        raise LatentgenError(f"could not find a free file name for {base} in {self.folder}")


def save_png(gen: GeneratedImage, path: Path, *, overwrite: bool) -> Path:
    """Write ``gen`` as a PNG with its metadata to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so a later run can tell a dead writer's leftovers (kill -9)
    # from a live writer's file in progress: see remove_stale_temps.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an image is an ordinary file
        with os.fdopen(fd, "wb") as f:
            gen.image.save(f, format="PNG", pnginfo=png_info(gen))
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no race with another writer
            except FileExistsError:
                raise OutputExistsError(
                    f"{path} already exists; pass --overwrite or choose another --out"
                ) from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise OutputExistsError(f"{path} already exists; pass --overwrite") from None
                os.replace(tmp, path)
        return path
    except OSError as exc:
        raise LatentgenError(f"could not write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files under ``folder`` left by writers that no longer run. Returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for p in folder.rglob(f".*{TEMP_SUFFIX}"):
        m = _TEMP_NAME.match(p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
