"""``latentgen batch``: many prompts, grouped into U-Net batches, resumable, over one or more processes.

1. Plan: every (prompt line, image index) becomes a :class:`WorkItem` with a resolved request, a
   content-derived key and a deterministic file name. Bad lines are reported by number and skipped.
2. Skip what is done: an item is done when a manifest record says so and its file is there, or when
   its file is there carrying its key (the process died between writing the image and the record).
3. Run the rest: items with the same :class:`~latentgen.pipeline.Settings` share U-Net batches of up
   to ``batch_size``; each distinct prompt is encoded once; each image is written (atomically) and
   recorded in the manifest as soon as its batch finishes. A failing batch is recorded and skipped.

The manifest is JSON lines, one record per image; each process appends to its own shard
(``manifest.jsonl``, or ``manifest.rank{R}.jsonl`` under several processes) and
:func:`read_manifest` reads all shards as one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from latentgen.errors import LatentgenError, OutputExistsError, UsageError
from latentgen.metadata import read_text_chunks
from latentgen.outputs import IMAGE_SUFFIX, save_png, slug
from latentgen.pipeline import Job, Pipeline, Settings
from latentgen.prompts_file import LineError, PromptLine
from latentgen.request import GenerationRequest

log = logging.getLogger("latentgen")
LAYOUTS = ("flat", "geneval")


@dataclass
class WorkItem:
    line: PromptLine
    image: int  # index of this image within its line
    request: GenerationRequest  # resolved, for exactly this image (num_images=1, its own seed)
    key: str  # hash of what determines the pixels: request, model, dtype
    path: Path  # relative to the output folder


@dataclass
class Summary:
    total: int = 0
    done: int = 0  # made by this run
    skipped: int = 0  # already there from an earlier run
    failed: int = 0
    bad_lines: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    written: list[Path] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        s = (
            f"batch: {self.done} made, {self.skipped} already done, {self.failed} failed"
            f"{f', {self.bad_lines} bad lines' if self.bad_lines else ''} of {self.total} images "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        )
        return s + (" — interrupted; run the same command again to finish" if self.interrupted else "")


# --- 1. plan ---------------------------------------------------------------------------------------


def plan(
    lines: Iterable[PromptLine],
    defaults: dict[str, Any],
    source,
    model_hash: str,
    dtype: str,
    layout: str = "flat",
) -> tuple[list[WorkItem], list[LineError]]:
    """Resolve every line against the command-line ``defaults`` and the model; bad lines become errors."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    items, errors = [], []
    for line in lines:
        fields = {**defaults, **line.fields}
        fields["negative_prompt"] = fields.pop("negative", "") or ""
        name = fields.pop("name", None)
        try:
            req = GenerationRequest.from_dict(fields).resolve(source)
        except UsageError as exc:
            errors.append(LineError(line.line, str(exc)))
            continue
        for i in range(req.num_images):
            one = replace(req, seed=req.seed + i, num_images=1)
            key = item_key(one, model_hash, dtype)
            items.append(WorkItem(line, i, one, key, _path(line, i, one, key, name, layout)))
    return items, errors


def item_key(req: GenerationRequest, model_hash: str, dtype: str) -> str:
    request = req.to_dict()
    for option in ("guidance_rescale", "fill_in"):  # off: the key of a run from before the option
        if not request[option]:
            del request[option]
    blob = json.dumps({"request": request, "model": model_hash, "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _path(
    line: PromptLine, image: int, req: GenerationRequest, key: str, name: str | None, layout: str
) -> Path:
    if layout == "geneval":
        return Path(f"{line.index:05d}") / "samples" / f"{image:04d}{IMAGE_SUFFIX}"
    stem = slug(name, 40) if name else slug(req.prompt, 40)
    # Line number and seed make names readable; the key makes distinct requests never share a name.
    return Path(f"{line.line:05d}-{stem}-{req.seed}-{key[:8]}{IMAGE_SUFFIX}")


# --- 2. the manifest -------------------------------------------------------------------------------


def shard_name(rank: int, world: int) -> str:
    return "manifest.jsonl" if world == 1 else f"manifest.rank{rank}.jsonl"


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """All shards as one: the last record per key wins. A torn last line (kill -9) is ignored."""
    records: dict[str, dict[str, Any]] = {}
    for shard in sorted(out.glob("manifest*.jsonl")):
        with open(shard, encoding="utf-8", errors="replace") as f:
            for text in f:
                try:
                    rec = json.loads(text)
                    records[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue
    return records


class ManifestShard:
    """This process's manifest file: one JSON record per line, flushed and synced per record."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _record(item: WorkItem, status: str, error: str | None = None) -> dict[str, Any]:
    rec = {
        "key": item.key,
        "line": item.line.line,
        "image": item.image,
        "file": item.path.as_posix(),
        "status": status,
        "request": item.request.to_dict(),
    }
    if error:
        rec["error"] = error
    return rec


def pending(items: list[WorkItem], out: Path, shard: ManifestShard) -> tuple[list[WorkItem], int]:
    """The items still to make, and how many are done already (recording any done but unrecorded)."""
    records = read_manifest(out)
    todo, done = [], 0
    for item in items:
        path = out / item.path
        rec = records.get(item.key)
        if rec and rec.get("status") == "done" and path.is_file() and path.stat().st_size > 0:
            done += 1
        elif rec is None and path.is_file() and _key_in_file(path) == item.key:
            shard.append(_record(item, "done"))  # written, then killed before its record
            done += 1
        else:
            todo.append(item)
    return todo, done


def _key_in_file(path: Path) -> str | None:
    try:
        return json.loads(read_text_chunks(path).get("latentgen", "{}")).get("batch", {}).get("key")
    except (UsageError, ValueError, AttributeError):
        return None


# --- 3. run ----------------------------------------------------------------------------------------


def run(
    pipe: Pipeline,
    todo: list[WorkItem],
    out: Path,
    shard: ManifestShard,
    *,
    batch_size: int,
    overwrite: bool = False,
    on_image: Callable[[WorkItem, Path], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    summary: Summary,
) -> Summary:
    """Make ``todo`` in U-Net batches of compatible items; record every image in ``shard``."""
    t0 = time.perf_counter()
    groups: dict[Settings, list[WorkItem]] = {}
    for item in todo:
        groups.setdefault(Settings.of(item.request), []).append(item)
    for settings, group in groups.items():
        for start in range(0, len(group), batch_size):
            if should_stop():
                summary.interrupted = True
                summary.seconds += time.perf_counter() - t0
                return summary
            chunk = group[start : start + batch_size]
            jobs = [Job(it.request.prompt, it.request.negative_prompt, it.request.seed) for it in chunk]
            try:
                images, notes = pipe.sample(jobs, settings)
            except LatentgenError as exc:
                log.warning("batch of %d (lines %s) failed: %s", len(chunk), _lines(chunk), exc)
                for it in chunk:
                    shard.append(_record(it, "failed", str(exc)))
                summary.failed += len(chunk)
                continue
            for it, image in zip(chunk, images, strict=True):
                _write(pipe, it, image, notes, out, shard, overwrite, summary, on_image)
    summary.seconds += time.perf_counter() - t0
    return summary


def _write(pipe, item, image, notes, out, shard, overwrite, summary, on_image) -> None:
    extra = {"batch": {"key": item.key, "line": item.line.line, **_geneval(item)}}
    gen = pipe.wrap(image, item.request, item.image, notes, extra=extra)
    path = out / item.path
    try:
        save_png(gen, path, overwrite=overwrite)
    except OutputExistsError:
        if _key_in_file(path) == item.key:  # another process made this very image meanwhile
            shard.append(_record(item, "done"))
            summary.skipped += 1
            return
        error = f"{path} exists from a different request; use another --out, or --overwrite"
        log.warning("line %d: %s", item.line.line, error)
        shard.append(_record(item, "failed", error))
        summary.failed += 1
        return
    except LatentgenError as exc:
        log.warning("line %d: %s", item.line.line, exc)
        shard.append(_record(item, "failed", str(exc)))
        summary.failed += 1
        return
    shard.append(_record(item, "done"))
    summary.done += 1
    summary.written.append(path)
    if on_image is not None:
        on_image(item, path)


def _geneval(item: WorkItem) -> dict[str, Any]:
    return {"geneval": item.line.raw} if "tag" in item.line.raw else {}


def _lines(items: list[WorkItem]) -> str:
    nums = sorted({it.line.line for it in items})
    return ", ".join(map(str, nums[:5])) + (" …" if len(nums) > 5 else "")


def write_geneval_metadata(items: list[WorkItem], out: Path) -> None:
    """GenEval's per-prompt ``metadata.jsonl`` (the line's own JSON, or a prompt record for text lines)."""
    seen = set()
    for item in items:
        if item.line.index in seen:
            continue
        seen.add(item.line.index)
        folder = out / f"{item.line.index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = item.line.raw or {"prompt": item.request.prompt}
        target = folder / "metadata.jsonl"
        text = json.dumps(meta, ensure_ascii=False) + "\n"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            tmp = folder / f".metadata.jsonl.{os.getpid()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)


def grid(items: list[WorkItem], out: Path, columns: int = 8, caption_h: int = 28) -> Image.Image | None:
    """A contact sheet of the finished images of ``items``, each captioned with line and prompt."""
    tiles = [(it, out / it.path) for it in items if (out / it.path).is_file()]
    if not tiles:
        return None
    with Image.open(tiles[0][1]) as first:
        w, h = first.size
    scale = max(1, 128 // max(w, h))
    tw, th = w * scale, h * scale
    tw_full = max(tw, 128)
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * (tw_full + 4) + 4, rows * (th + caption_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (it, path) in enumerate(tiles):
        x = 4 + (n % cols) * (tw_full + 4)
        y = 4 + (n // cols) * (th + caption_h + 4)
        with Image.open(path) as im:
            sheet.paste(im.convert("RGB").resize((tw, th), Image.NEAREST), (x, y))
        text = f"{it.line.line}: {it.request.prompt}"
        draw.text((x, y + th + 2), text[:24], fill="black")
        draw.text((x, y + th + 14), text[24:48], fill="black")
    return sheet
