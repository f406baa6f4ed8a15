"""Image objectives: SimMIM-style masked image modelling and image classification.

Examples are ``{"image": uint8 array (H, W, C)}`` (plus ``"label"`` for classification). Collation turns a batch
of images into ``pixel_values`` with the model's image processor (PIL resize to the model's input size, scale to
[0, 1], normalise per channel: numpy and PIL only, no torchvision).

* :class:`MaskedImageModeling`: each image gets ``round(mask_ratio * P)`` of its ``P`` patches masked, chosen
  uniformly without replacement from an explicit generator (so runs repeat); the masked patches' embeddings are
  replaced by the learnt mask token and the model (``ViTForMaskedImageModeling``: final LayerNorm, then a 1x1
  convolution to ``patch^2 * C`` values and a pixel shuffle) reconstructs the pixels. The loss is the mean L1
  error over the masked patches' pixels (SimMIM; transformers computes it).
* :class:`ImageClassification`: cross-entropy of the classifier on the [CLS] position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def pixel_values(processor, examples: Sequence[dict]) -> torch.Tensor:
    """``(B, C, H, W)`` float pixels of the examples' images, as the model's image processor prepares them."""
    images = [np.asarray(e["image"], dtype=np.uint8) for e in examples]
    return processor(images, return_tensors="pt")["pixel_values"]


def random_patch_mask(batch: int, patches: int, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """``(batch, patches)`` bool mask with exactly ``round(ratio * patches)`` (at least 1) True per row."""
    masked = max(1, round(ratio * patches))
    order = torch.rand((batch, patches), generator=generator).argsort(dim=1)
    return order < masked


@dataclass
class MaskedImageModeling:
    """SimMIM masked image modelling on ViT: mask a fixed share of patches, reconstruct their pixels (L1)."""

    processor: object
    patches: int
    mask_ratio: float = 0.6
    head: str = "mim"

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        pixels = pixel_values(self.processor, examples)
        mask = random_patch_mask(len(examples), self.patches, self.mask_ratio, generator)
        return {"pixel_values": pixels, "bool_masked_pos": mask}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["bool_masked_pos"].numel() + batch["bool_masked_pos"].shape[0])  # patches + [CLS]

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """The decoder reconstructs every patch (the loss keeps the masked ones)."""
        return int(batch["bool_masked_pos"].numel())


@dataclass
class ImageClassification:
    """Cross-entropy of the image classifier; examples carry an integer ``label``."""

    processor: object
    patches: int
    head: str = "image_classification"

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return {"pixel_values": pixel_values(self.processor, examples), "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0] * (self.patches + 1))

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])


def image_examples(images: np.ndarray, labels: Sequence[int] | None = None) -> list[dict]:
    """Examples of an image array ``(N, H, W, C)``, with ``label`` when ``labels`` are given."""
    if labels is None:
        return [{"image": image} for image in images]
    return [{"image": image, "label": int(label)} for image, label in zip(images, labels, strict=True)]
