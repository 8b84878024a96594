"""Prompt files for ``latentgen batch``: .txt, .jsonl (GenEval's evaluation_metadata.jsonl too), .csv.

Every line becomes a :class:`PromptLine` or a :class:`LineError` naming its line number; one bad line
never stops the others.

- ``.txt``: one prompt per line; blank lines and ``#`` comments skipped.
- ``.jsonl``: one JSON object per line with any of :data:`FIELDS`. GenEval's ``tag`` / ``include``
  keys are accepted (and kept, for ``--layout geneval``).
- ``.csv``: a header row naming columns from :data:`FIELDS`.

CRLF line ends and a UTF-8 byte-order mark are accepted; undecodable bytes are reported per line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgen.errors import UsageError

# Fields a line may set; "negative" is the file-friendly name of GenerationRequest.negative_prompt.
FIELDS = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "width",
    "height",
    "num_images",
    "layout_strength",
    "subject_strength",
    "count_strength",
    "guidance_rescale",
    "name",
)
INT_FIELDS = ("seed", "steps", "width", "height", "num_images")
FLOAT_FIELDS = ("guidance", "guidance_rescale", "layout_strength", "subject_strength", "count_strength")
GENEVAL_FIELDS = ("tag", "include")


@dataclass
class PromptLine:
    line: int  # 1-based line number in the file
    index: int  # 0-based position among the file's prompts (GenEval's folder number)
    fields: dict[str, Any]  # a subset of FIELDS, typed
    raw: dict[str, Any] = field(default_factory=dict)  # the line's own JSON object (GenEval metadata)


@dataclass
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_prompt_file(path: str | Path) -> tuple[list[PromptLine], list[LineError]]:
    """Parse a prompt file. Raises :class:`UsageError` only if the file itself cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"prompt file {p} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a folder; give a .txt, .jsonl or .csv prompt file") from None
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {p}: {exc.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_csv(data)
    rows = data.split(b"\n")
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _collect(rows, _parse_json_line)
    return _collect(rows, _parse_text_line)


def _collect(rows: list[bytes], parse) -> tuple[list[PromptLine], list[LineError]]:
    lines, errors = [], []
    for number, raw in enumerate(rows, start=1):
        try:
            text = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(LineError(number, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8"))
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            fields, obj = parse(text)
            lines.append(PromptLine(number, len(lines), fields, obj))
        except UsageError as exc:
            errors.append(LineError(number, str(exc)))
    return lines, errors


def _parse_text_line(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"prompt": text.strip()}, {}


def _parse_json_line(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"bad JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in FIELDS and k not in GENEVAL_FIELDS]
    if unknown:
        raise UsageError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    return typed_fields({k: v for k, v in obj.items() if k in FIELDS}), obj


def _read_csv(data: bytes) -> tuple[list[PromptLine], list[LineError]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [], [LineError(line, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8")]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    unknown = [h for h in header if h not in FIELDS]
    if unknown or "prompt" not in header:
        return [], [LineError(1, f"CSV header must name 'prompt' and only {', '.join(FIELDS)}; got {header}")]
    lines, errors = [], []
    for row in reader:
        number = reader.line_num
        if None in row:
            errors.append(LineError(number, "more values than header columns"))
            continue
        values = {k: v for k, v in row.items() if v not in (None, "")}
        if not values.get("prompt", "").strip():
            continue
        try:
            lines.append(PromptLine(number, len(lines), typed_fields(values), {}))
        except UsageError as exc:
            errors.append(LineError(number, str(exc)))
    return lines, errors


def typed_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Check and convert a line's fields (strings from CSV, JSON values) to their types."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in INT_FIELDS:
            out[key] = _as_int(key, value)
        elif key in FLOAT_FIELDS:
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                raise UsageError(f"{key} {value!r} is not a number") from None
        elif key in ("prompt", "negative", "sampler", "name"):
            if not isinstance(value, str):
                raise UsageError(f"{key} must be text, got {value!r}")
            out[key] = value
    if not str(out.get("prompt", "")).strip():
        raise UsageError("no prompt on this line")
    return out


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{key} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise UsageError(f"{key} {value!r} is not an integer")
