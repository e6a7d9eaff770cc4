"""Image-caption readers: Karpathy-split JSON (COCO, Flickr30k), image folders with metadata.jsonl,
parquet files and any ``datasets.Dataset`` with an image and a text column.

All return one row per image: ``image`` (``Image`` feature, decoded lazily from its path),
``image_id`` and ``captions`` (a list of strings); ``flatten_captions`` gives one row per caption.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import datasets

from .files import existing_path, field, filter_readable_images, image_file, load_json, load_jsonl, top_level

CAPTION_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
        "split": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
    }
)


def read_karpathy_captions(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    split: str | Sequence[str] | None = None,
    check_images: bool = True,
) -> datasets.Dataset:
    """Read a Karpathy-split file (``dataset_coco.json``, ``dataset_flickr30k.json``).

    Each entry of ``images`` needs ``filename``, ``split``, ``imgid`` and ``sentences`` (each with
    ``raw``); the image is ``image_dir/filepath/filename`` (``filepath`` is optional: Flickr30k has
    none). ``split`` keeps only those splits, e.g. ``("train", "restval")``.
    """
    data = load_json(annotation_file)
    records = top_level(data, "images", annotation_file)
    image_dir = existing_path(image_dir, "image directory")
    wanted = None if split is None else ({split} if isinstance(split, str) else set(split))
    columns = {name: [] for name in CAPTION_FEATURES}
    seen_splits = set()
    for index, record in enumerate(records):
        imgid = field(record, "imgid", annotation_file, f"record {index}", int)
        where = f"record {index} (imgid={imgid})"
        filename = field(record, "filename", annotation_file, where, str)
        record_split = field(record, "split", annotation_file, where, str)
        sentences = field(record, "sentences", annotation_file, where, list)
        if not sentences:  # a captionless image would crash the collator's caption draw much later
            raise ValueError(f"{annotation_file}: {where} has an empty `sentences` list; every image needs a caption")
        captions = [field(s, "raw", annotation_file, f"{where} sentence {j}", str) for j, s in enumerate(sentences)]
        filepath = field(record, "filepath", annotation_file, where, str) if "filepath" in record else ""
        seen_splits.add(record_split)
        if wanted is not None and record_split not in wanted:
            continue
        columns["image"].append(image_file(image_dir, os.path.join(filepath, filename), annotation_file, where))
        columns["image_id"].append(imgid)
        columns["file_name"].append(filename)
        columns["split"].append(record_split)
        columns["captions"].append(captions)
    if wanted is not None and not columns["image"]:
        raise ValueError(f"{annotation_file}: `split` {split!r} matches no record; its splits are {sorted(seen_splits)}")
    ds = datasets.Dataset.from_dict(columns, features=CAPTION_FEATURES)
    return filter_readable_images(ds) if check_images else ds


def read_image_folder(
    data_dir: str | os.PathLike,
    *,
    text_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
    check_images: bool = True,
) -> datasets.Dataset:
    """Read a folder of images with a ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per
    line) through ``load_dataset("imagefolder")``. The metadata is checked first so a bad line fails
    with its line number and field rather than deep inside ``datasets``."""
    data_dir = existing_path(data_dir, "image folder")
    metadata = existing_path(data_dir / "metadata.jsonl", "metadata file (file_name + text per line)")
    records = load_jsonl(metadata)
    if not records:  # `datasets` would fail with an IndexError deep inside its folder builder
        raise ValueError(f"{metadata}: no records; expected one {{\"file_name\": ..., \"{text_column}\": ...}} per line")
    for line, record in enumerate(records, start=1):
        name = field(record, "file_name", metadata, f"line {line}", str)
        field(record, text_column, metadata, f"line {line} (file_name={name!r})", (str, list))
        image_file(data_dir, name, metadata, f"line {line}")
    ds = datasets.load_dataset(
        "imagefolder", data_dir=str(data_dir), split="train", cache_dir=None if cache_dir is None else str(cache_dir)
    )
    return from_hf_dataset(ds, "image", text_column, check_images=check_images, source=str(data_dir))


def read_parquet(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_column: str = "image",
    text_column: str = "text",
    cache_dir: str | os.PathLike | None = None,
    check_images: bool = True,
) -> datasets.Dataset:
    """Read parquet files with an image column (``Image`` feature, image bytes or file paths) and a
    text column (a string or a list of strings per row)."""
    import pyarrow.parquet as pq

    files = [data_files] if isinstance(data_files, str | os.PathLike) else list(data_files)
    if not files:
        raise ValueError("`data_files` must name at least one parquet file, got an empty list")
    rows = 0
    for path in files:
        existing_path(path, "parquet file")
        try:
            rows += pq.ParquetFile(path).metadata.num_rows
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: not a readable parquet file ({error})") from None
    if rows == 0:  # `datasets` would fail deep inside its builder
        raise ValueError(f"{', '.join(str(p) for p in files)}: no rows")
    ds = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in files], split="train",
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    source = ", ".join(str(p) for p in files)
    return from_hf_dataset(ds, image_column, text_column, check_images=check_images, source=source)


def from_hf_dataset(
    ds: datasets.Dataset,
    image_column: str = "image",
    text_column: str = "text",
    *,
    check_images: bool = False,
    source: str | None = None,
) -> datasets.Dataset:
    """Bring any ``datasets.Dataset`` with an image and a text column into the caption schema:
    ``image_column`` becomes ``image`` (an ``Image`` feature; paths and raw bytes are cast),
    ``text_column`` becomes ``captions`` (a list of strings), and ``image_id`` (the row index) is
    added when missing. Other columns are kept."""
    prefix = f"{source}: " if source else ""
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"`ds` must be a Dataset, got a DatasetDict with splits {list(ds)}; pass one, e.g. ds['train']")
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"`ds` must be a datasets.Dataset, got {type(ds).__name__}")
    for argument, name in (("image_column", image_column), ("text_column", text_column)):
        if name not in ds.column_names:
            raise ValueError(f"{prefix}`{argument}` {name!r} is not a column; the columns are {ds.column_names}")
    for target, name in (("image", image_column), ("captions", text_column)):
        if name != target and target in ds.column_names:
            raise ValueError(f"{prefix}cannot rename column {name!r} to {target!r}: a column {target!r} exists already")
    ds = _as_image_column(ds, image_column, prefix)
    texts = ds[text_column]
    for index, text in enumerate(texts):
        ok = isinstance(text, str) and text.strip() or (
            isinstance(text, list) and text and all(isinstance(t, str) and t.strip() for t in text)
        )
        if not ok:
            raise ValueError(
                f"{prefix}row {index} field '{text_column}' must be a non-empty string or list of strings, got {text!r:.80}"
            )
    captions = [[text] if isinstance(text, str) else list(text) for text in texts]
    ds = ds.remove_columns(text_column)
    ds = ds.add_column("captions", captions, feature=datasets.Sequence(datasets.Value("string")))
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if "image_id" not in ds.column_names:
        ds = ds.add_column("image_id", list(range(len(ds))), feature=datasets.Value("int64"))
    return filter_readable_images(ds, ["image"]) if check_images else ds


def _as_image_column(ds: datasets.Dataset, name: str, prefix: str) -> datasets.Dataset:
    feature = ds.features[name]
    if isinstance(feature, datasets.Image):
        return ds
    castable = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary")
    castable = castable or isinstance(feature, dict) and {"bytes", "path"} <= set(feature)
    if not castable:
        raise ValueError(
            f"{prefix}`image_column` {name!r} must hold images, file paths or image bytes, got feature {feature}"
        )
    return ds.cast_column(name, datasets.Image())


def flatten_captions(ds: datasets.Dataset) -> datasets.Dataset:
    """One row per (image, caption): ``captions`` becomes ``caption`` plus ``caption_index`` (its
    position in the image's list); every other column is repeated."""
    if "captions" not in ds.column_names:
        raise ValueError(f"`ds` must have a 'captions' column, got columns {ds.column_names}")
    captions = ds["captions"]
    rows = [i for i, texts in enumerate(captions) for _ in texts]
    out = ds.select(rows).flatten_indices().remove_columns("captions")
    out = out.add_column("caption", [t for texts in captions for t in texts], feature=datasets.Value("string"))
    positions = [k for texts in captions for k in range(len(texts))]
    return out.add_column("caption_index", positions, feature=datasets.Value("int32"))
