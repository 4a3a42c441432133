"""The image and text example models, as source text a modeller signs into a task (style B, plain ``nn.Module``).

``SHAPE_NET`` is a small convolutional model over ``[batch, channels, height, width]`` images (the datastructure's
``image_shape``); ``TINY_BERT_LORA`` a 2-layer BERT (hidden 32) built from its config with random weights (nothing
downloaded) and wrapped by peft's LoRA on query and value, for token ids (``vocab_size``, ``input_size`` tokens).
Both take ``forward(inputs, labels=None)`` and return ``outputs`` and, given labels, ``loss``. Pods import them only
inside their sandbox; nothing here imports torch.
"""

from __future__ import annotations

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
