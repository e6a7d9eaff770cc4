"""File helpers shared by the readers: loading annotation files with errors that name the file, the
record and the field, and dropping images that do not decode (counted in the log, never silently)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from PIL import Image

logger = logging.getLogger(__name__)


def existing_path(path, what: str) -> Path:
    """``path`` as a Path, or FileNotFoundError naming what it should have been."""
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"{what} does not exist: {path}")
    return Path(path)


def load_json(path, what: str = "annotation file"):
    path = existing_path(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None


def load_jsonl(path, what: str = "annotation file") -> list[dict]:
    path = existing_path(path, what)
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: malformed JSON on line {line_number}: {error.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_number} must be a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def field(record, name: str, source, where: str, kind: type | tuple[type, ...] | None = None):
    """``record[name]``; a ValueError naming the file, the record and the field when it is missing or
    of the wrong type. ``where`` describes the record, e.g. "record 3 (imgid=17)"."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: {where} must be a JSON object, got {type(record).__name__}")
    if name not in record:
        raise ValueError(f"{source}: {where} is missing field '{name}'")
    value = record[name]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and bool not in _tuple(kind)):
        names = "/".join(k.__name__ for k in _tuple(kind))
        raise ValueError(f"{source}: {where} field '{name}' must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def top_level(data, key: str, source, kind: type = list):
    """A top-level entry of an annotation file, e.g. ``data["images"]``."""
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{source}: missing top-level field '{key}'")
    if not isinstance(data[key], kind):
        raise ValueError(f"{source}: top-level field '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}")
    return data[key]


def image_file(directory: Path, relative: str, source, where: str) -> str:
    """The path of an image named by an annotation, which must exist and stay inside `directory` (an annotation
    file is data: `../elsewhere/x.jpg` or an absolute path must not read files outside the image directory; checked
    on the name, so a symlinked dataset folder inside `directory` still works)."""
    name = os.path.normpath(relative)
    if os.path.isabs(relative) or name == os.pardir or name.startswith(os.pardir + os.sep):
        raise ValueError(f"{source}: {where} names image {relative!r}, which is outside the image directory "
                         f"{directory}")
    path = directory / relative
    if not path.is_file():
        raise FileNotFoundError(f"{source}: {where} names image {relative!r}, which does not exist: {path}")
    return str(path)


def _readable(value) -> bool:
    if value is None:
        return False
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            return False
        with Image.open(source) as image:
            image.draft("RGB", (32, 32))  # JPEGs decode at 1/8 scale: still reads (and checks) every byte
            image.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def _readable_cached(value, checked: dict[str, bool]) -> bool:
    path = value.get("path") if value and not value.get("bytes") else None
    if path is None:
        return _readable(value)
    if path not in checked:
        checked[path] = _readable(value)
    return checked[path]


def image_columns(ds: datasets.Dataset) -> list[str]:
    return [name for name, feature in ds.features.items() if isinstance(feature, datasets.Image)]


def filter_readable_images(
    ds: datasets.Dataset, columns: Sequence[str] | None = None, *, max_listed: int = 5
) -> datasets.Dataset:
    """Drop the rows whose image (in any of ``columns``, default every ``Image`` column) does not
    decode with PIL: missing files, truncated files, non-images. Logs a warning with the count and the
    first ``max_listed`` file names; returns ``ds`` itself when every image is readable."""
    columns = image_columns(ds) if columns is None else list(columns)
    for name in columns:
        if name not in ds.column_names or not isinstance(ds.features[name], datasets.Image):
            raise ValueError(f"`columns` must name Image columns of the dataset, got {name!r}; "
                             f"its Image columns are {image_columns(ds)}")
    if not columns or len(ds) == 0:
        return ds
    raw = ds.select_columns(columns)
    for name in columns:
        raw = raw.cast_column(name, datasets.Image(decode=False))
    keep, bad = [], []
    checked: dict[str, bool] = {}  # by path: VQA has several questions per image
    for index, row in enumerate(raw):
        broken = [row[name] for name in columns if not _readable_cached(row[name], checked)]
        if broken:
            bad.extend(_describe_image(value, index) for value in broken)
        else:
            keep.append(index)
    if not bad:
        return ds
    listed = ", ".join(bad[:max_listed]) + (", ..." if len(bad) > max_listed else "")
    logger.warning(
        "skipped %d of %d rows with unreadable images (%d images): %s",
        len(ds) - len(keep), len(ds), len(bad), listed,
    )
    return ds.select(keep)


def _describe_image(value, index: int) -> str:
    if value and value.get("path"):
        return os.path.basename(value["path"]) if value.get("bytes") else str(value["path"])
    return f"row {index} (embedded bytes)"
