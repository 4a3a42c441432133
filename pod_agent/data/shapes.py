"""A small real image set, drawn here (no download): grey PNGs of three shapes and a table naming them.

Owns ``write_shapes``: Pillow (imported on first use) renders ``per_class`` 28x28 images of each class in
``CLASSES`` (random size, place and stroke, some noise) under ``<dir>/<class>/``, the folder-per-class layout
``datasource.format = "image-folders"`` reads; and ``write_shapes_table``: a CSV whose rows name those files
(``image``), carry a short caption (``caption``: filler words and one word that hints at the shape) and the
class (``label``), for a table with an image and a text column. The tests and the image benchmark train on it.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

CLASSES = ("circle", "cross", "square")
CAPTION_WORDS = ("round", "ring", "disc", "plus", "cross", "x", "box", "block", "square")  # the hint words
_HINTS = {"circle": ["round", "ring", "disc"], "cross": ["plus", "cross", "x"], "square": ["box", "block", "square"]}
_FILLER = ["a", "the", "small", "big", "drawn", "shape", "grey", "picture", "of", "with", "line", "left", "right"]


def write_shapes(images_dir: Path, *, per_class: int, seed: int = 0, size: int = 28) -> list[tuple[str, str]]:
    """``per_class`` PNGs of each class under ``images_dir/<class>/``; returns (relative path, class) rows."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)  # noqa: S311 - reproducible drawings, not secrets
    rows: list[tuple[str, str]] = []
    for label in CLASSES:
        (images_dir / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = Image.new("L", (size, size), color=rng.randint(0, 40))
            draw = ImageDraw.Draw(image)
            extent = rng.randint(size // 3, size - 6)
            x0, y0 = rng.randint(1, size - extent - 1), rng.randint(1, size - extent - 1)
            box = (x0, y0, x0 + extent, y0 + extent)
            width, ink = rng.randint(1, 3), rng.randint(170, 255)
            if label == "circle":
                draw.ellipse(box, outline=ink, width=width)
            elif label == "square":
                draw.rectangle(box, outline=ink, width=width)
            else:
                draw.line((x0, y0, x0 + extent, y0 + extent), fill=ink, width=width)
                draw.line((x0, y0 + extent, x0 + extent, y0), fill=ink, width=width)
            for _ in range(12):
                image.putpixel((rng.randrange(size), rng.randrange(size)), rng.randint(0, 255))
            relative = f"{label}/{seed}-{index:04d}.png"
            image.save(images_dir / relative)
            rows.append((relative, label))
    rng.shuffle(rows)
    return rows


def _caption(label: str, rng: random.Random) -> str:
    words = [*rng.sample(_FILLER, 4), rng.choice(_HINTS[label])]
    rng.shuffle(words)
    return " ".join(words)


def write_shapes_table(path: Path, rows: list[tuple[str, str]], *, seed: int = 0) -> Path:
    """A CSV of ``image``, ``caption`` and ``label`` for ``rows`` (as ``write_shapes`` returns them)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible captions, not secrets
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "label"])
        for relative, label in rows:
            writer.writerow([relative, _caption(label, rng), label])
    return path
