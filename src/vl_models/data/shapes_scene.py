"""Shapes scenes: sampling, rendering and the geometry the language generator reasons about.

A scene is 1-4 coloured shapes placed in distinct cells of a 3x3 grid, so shapes never overlap and
every box is exact. Everything is a pure function of a ``random.Random`` so a sample is reproducible
from its seed alone.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
SEGMENTATION_CLASSES = ("background", *SHAPES)  # class i of `render_mask`
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUND = (0, 0, 0)
MAX_OBJECTS = 4
_GRID = 3
_SIZE_FRACTION = {"small": 0.14, "large": 0.27}  # of the image side; a large shape still fits a grid cell


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    # Pixel box, x1/y1 exclusive: the shape covers columns x0..x1-1 and rows y0..y1-1.
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def box_cxcywh(self, image_size: int) -> list[float]:
        """Normalised [cx, cy, w, h] in [0, 1] (the box convention of every grounding record)."""
        cx, cy = self.center
        s = float(image_size)
        return [cx / s, cy / s, (self.x1 - self.x0) / s, (self.y1 - self.y0) / s]

    def attributes(self) -> dict[str, str]:
        return {"size": self.size, "color": self.color, "shape": self.shape}


@dataclass(frozen=True)
class Scene:
    image_size: int
    objects: tuple[ShapeObject, ...]


def _cell_edges(image_size: int) -> list[int]:
    return [round(i * image_size / _GRID) for i in range(_GRID + 1)]


def shape_side(size: str, image_size: int) -> int:
    return max(3, round(_SIZE_FRACTION[size] * image_size))


def generate_scene(
    rng: random.Random, image_size: int = 64, *, min_objects: int = 1, max_objects: int = MAX_OBJECTS
) -> Scene:
    """Sample a scene whose (size, color, shape) triples are all different, so every object has a
    unique description and referring expressions and questions are unambiguous."""
    if image_size < 16:
        raise ValueError(f"`image_size` must be >= 16, got {image_size!r}")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= `min_objects` <= `max_objects` <= {MAX_OBJECTS}, got {min_objects!r} and {max_objects!r}"
        )
    edges = _cell_edges(image_size)
    count = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(_GRID * _GRID), count)
    seen: set[tuple[str, str, str]] = set()
    objects = []
    for cell in cells:
        while True:
            triple = (rng.choice(SIZES), rng.choice(tuple(COLORS)), rng.choice(SHAPES))
            if triple not in seen:
                break
        seen.add(triple)
        size, color, shape = triple
        side = shape_side(size, image_size)
        row, col = divmod(cell, _GRID)
        x0 = edges[col] + rng.randint(0, edges[col + 1] - edges[col] - side)
        y0 = edges[row] + rng.randint(0, edges[row + 1] - edges[row] - side)
        objects.append(ShapeObject(shape, color, size, x0, y0, x0 + side, y0 + side))
    return Scene(image_size, tuple(objects))


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill) -> None:
    # PIL coordinates are inclusive, our x1/y1 are exclusive.
    x0, y0, x1, y1 = obj.x0, obj.y0, obj.x1 - 1, obj.y1 - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross: two bars a third of the side wide
        third = (x1 - x0 + 1) // 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """Draw the scene on a black RGB canvas of ``scene.image_size`` pixels."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, COLORS[obj.color])
    return image


def render_mask(scene: Scene) -> Image.Image:
    """The scene's class mask (mode "L"): 0 on the background, 1 + the shape's index in ``SHAPES`` on its
    pixels. Drawn with the same primitives as ``render_scene`` (no anti-aliasing), so it covers exactly the
    pixels the image colours."""
    mask = Image.new("L", (scene.image_size, scene.image_size), 0)
    draw = ImageDraw.Draw(mask)
    for obj in scene.objects:
        _draw(draw, obj, 1 + SHAPES.index(obj.shape))
    return mask


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = _png_chunk(b"IEND", b"")


def encode_png(image: Image.Image) -> bytes:
    """A minimal RGB PNG (no row filters, zlib level 1). Three times faster than ``Image.save`` for
    these tiny flat images, which is what keeps Shapes generation at thousands of samples a second.
    Mode "L" images (class masks) stay 8-bit grayscale; anything else becomes RGB."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    channels, color_type = (1, 0) if image.mode == "L" else (3, 2)
    width, height = image.size
    rows = np.zeros((height, channels * width + 1), np.uint8)  # a leading 0 per row: filter type "none"
    rows[:, 1:] = np.frombuffer(image.tobytes(), np.uint8).reshape(height, channels * width)
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    return _PNG_SIGNATURE + header + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _PNG_END


def matches(obj: ShapeObject, description: dict[str, str]) -> bool:
    """An object matches a partial description such as {"color": "red", "shape": "circle"}."""
    return all(getattr(obj, key) == value for key, value in description.items())


def _axis_relations(dx: float, dy: float, image_size: int) -> list[str]:
    """Relations that clearly hold for an object offset by (dx, dy) from another (b - a): the offset
    along the axis is at least a tenth of the image and at least half the offset across it."""
    out = []
    if abs(dx) >= 0.1 * image_size and abs(dx) >= abs(dy) / 2:
        out.append("left of" if dx > 0 else "right of")
    if abs(dy) >= 0.1 * image_size and abs(dy) >= abs(dx) / 2:
        out.append("above" if dy > 0 else "below")
    return out


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str, image_size: int) -> bool:
    """Clearly true: used for true captions, "yes" answers and true statements."""
    (ax, ay), (bx, by) = a.center, b.center
    return relation in _axis_relations(bx - ax, by - ay, image_size)


def relation_possible(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Could be read as true at all (any offset in the right direction). A false statement must fail
    this weak test, so a hard negative is never arguably true."""
    (ax, ay), (bx, by) = a.center, b.center
    if relation == "left of":
        return ax < bx
    if relation == "right of":
        return ax > bx
    if relation == "above":
        return ay < by
    return ay > by


def true_relations(scene: Scene) -> list[tuple[int, str, int]]:
    """Every (i, relation, j) that clearly holds between two objects of the scene."""
    centers = [obj.center for obj in scene.objects]
    out = []
    for i, (ax, ay) in enumerate(centers):
        for j, (bx, by) in enumerate(centers):
            if i != j:
                out.extend((i, rel, j) for rel in _axis_relations(bx - ax, by - ay, scene.image_size))
    return out
