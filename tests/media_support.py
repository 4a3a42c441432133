"""Small real image and text data for the image and text tests, made here (no download), and their models.

``draw_shapes`` renders grey 28x28 PNGs of three shapes with Pillow (random size, place and stroke, some
noise), ``write_media_table`` a CSV whose rows name those files (``image``), carry a short caption
(``caption``, words that hint at the shape among filler words) and the class (``label``). ``SHAPE_NET``
is a small convolutional model and ``TINY_BERT_LORA`` a 2-layer BERT (hidden 32, random init from its
config) fine-tuned with LoRA through peft, both in the plain ``nn.Module`` style (``forward(inputs,
labels=None)`` returning ``outputs`` and ``loss``).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "cross", "square")
_HINTS = {"circle": ["round", "ring", "disc"], "cross": ["plus", "cross", "x"], "square": ["box", "block", "square"]}
_FILLER = ["a", "the", "small", "big", "drawn", "shape", "grey", "picture", "of", "with", "line", "left", "right"]


def draw_shapes(images_dir: Path, *, per_class: int, seed: int = 0, size: int = 28) -> list[tuple[str, str]]:
    """``per_class`` PNGs of each class under ``images_dir/<class>/``; returns (relative path, class) rows."""
    rng = random.Random(seed)
    rows = []
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


def caption(label: str, rng: random.Random) -> str:
    words = [*rng.sample(_FILLER, 4), rng.choice(_HINTS[label])]
    rng.shuffle(words)
    return " ".join(words)


def write_media_table(path: Path, rows: list[tuple[str, str]], *, seed: int = 0) -> Path:
    """A CSV of ``image``, ``caption`` and ``label`` for ``rows`` (as ``draw_shapes`` returns them)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "label"])
        for relative, label in rows:
            writer.writerow([relative, caption(label, rng), label])
    return path


SHAPE_NET_CLASS = "ShapeNet"
SHAPE_NET = '''
import torch
from torch import nn
from torch.nn import functional as F


class ShapeNet(nn.Module):
    """Two convolutions and a linear head over [batch, channels, height, width] images."""

    def __init__(self, datastructure):
        super().__init__()
        channels, height, width = datastructure.image_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * (height // 4) * (width // 4), datastructure.n_classes)

    def forward(self, inputs, labels=None):
        outputs = self.head(self.features(inputs).flatten(1))
        result = {"outputs": outputs}
        if labels is not None:
            result["loss"] = F.cross_entropy(outputs, labels)
        return result
'''

TINY_BERT_LORA_CLASS = "TinyBertLora"
TINY_BERT_LORA = '''
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import BertConfig, BertForSequenceClassification


class TinyBertLora(nn.Module):
    """A 2-layer BERT built from its config (random init, nothing downloaded), LoRA on query and value."""

    def __init__(self, datastructure):
        super().__init__()
        config = BertConfig(
            vocab_size=datastructure.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=datastructure.input_size,
            num_labels=datastructure.n_classes,
        )
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
        self.model = get_peft_model(BertForSequenceClassification(config), lora)

    def forward(self, inputs, labels=None):
        out = self.model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels)
        result = {"outputs": out.logits}
        if labels is not None:
            result["loss"] = out.loss
        return result
'''
