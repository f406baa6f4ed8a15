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
from typing import ClassVar

import numpy as np
import torch

from fedbt.errors import FedBTError
from fedbt.training.objectives import Objective, ObjectiveSettings, named, register_objective


def pixel_values(processor, examples: Sequence[dict]) -> torch.Tensor:
    """``(B, C, H, W)`` float pixels of the examples' images, as the model's image processor prepares them."""
    images = [np.asarray(e["image"], dtype=np.uint8) for e in examples]
    return processor(images, return_tensors="pt")["pixel_values"]


def random_patch_mask(batch: int, patches: int, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """``(batch, patches)`` bool mask with exactly ``round(ratio * patches)`` (at least 1) True per row."""
    masked = max(1, round(ratio * patches))
    order = torch.rand((batch, patches), generator=generator).argsort(dim=1)
    return order < masked


def _vit_head(arch, out_suffix: str, rows: int) -> list[tuple[int, str, list[str]]]:
    """ViT heads: the final LayerNorm (0 FLOPs), then the head's matmul over ``rows`` positions."""
    head_names = arch.head_params()
    norm = [n for n in head_names if ".layernorm." in n]
    out = named(arch, out_suffix, head_names)
    if out is None or not norm:
        raise FedBTError(f"no ViT head (final layernorm and {out_suffix}) found")
    group = [n for n in head_names if n not in norm]
    return [(0, norm[0], norm), (rows * 2 * arch.param_numel[out], out, group)]


class _ImageObjective(Objective):
    modality: ClassVar[str] = "image"
    processor: object
    patches: int

    def shape(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        return int(batch["pixel_values"].shape[0]), self.patches + 1  # patches + [CLS]

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        sequences, positions = self.shape(batch)
        return sequences * positions


@register_objective
@dataclass
class MaskedImageModeling(_ImageObjective):
    """SimMIM masked image modelling on ViT: mask a fixed share of patches, reconstruct their pixels (L1)."""

    name: ClassVar[str] = "mim"
    scenario: ClassVar[str] = "pretrain"
    auto_class: ClassVar[str] = "AutoModelForMaskedImageModeling"

    processor: object
    patches: int
    mask_ratio: float = 0.6

    @classmethod
    def build(cls, processor, settings: ObjectiveSettings) -> MaskedImageModeling:
        if settings.patches < 1:
            raise ValueError(f"objective {cls.name!r} needs the number of patches per image, got {settings.patches}")
        return cls(processor, settings.patches, settings.mask_ratio)

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        pixels = pixel_values(self.processor, examples)
        mask = random_patch_mask(len(examples), self.patches, self.mask_ratio, generator)
        return {"pixel_values": pixels, "bool_masked_pos": mask}

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """The decoder reconstructs every patch (the loss keeps the masked ones)."""
        return int(batch["bool_masked_pos"].numel())

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        return tokens - sequences  # every patch, not [CLS]

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        return _vit_head(arch, "decoder.0.weight", predicted_tokens)


@register_objective
@dataclass
class ImageClassification(_ImageObjective):
    """Cross-entropy of the image classifier on [CLS]; examples carry an integer ``label``."""

    name: ClassVar[str] = "image_classification"
    auto_class: ClassVar[str] = "AutoModelForImageClassification"

    processor: object
    patches: int

    @classmethod
    def build(cls, processor, settings: ObjectiveSettings) -> ImageClassification:
        if settings.patches < 1:
            raise ValueError(f"objective {cls.name!r} needs the number of patches per image, got {settings.patches}")
        return cls(processor, settings.patches)

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        labels = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        return {"pixel_values": pixel_values(self.processor, examples), "labels": labels}

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        return sequences

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        return _vit_head(arch, "classifier.weight", sequences)

    @classmethod
    def encode(cls, split, processor, max_length: int) -> list[dict]:
        """``{"image", "label"}`` (uint8 pixels, prepared per batch by the objective) per image."""
        rows = split.with_format("numpy")[:]
        return image_examples(rows["image"].astype("uint8"), rows["label"].tolist())

    @classmethod
    def score(cls, task, examples: Sequence[dict], predictions: Sequence) -> dict[str, float]:
        from fedbt.metrics import compute_metrics

        return compute_metrics(task.scored_metrics, list(predictions), [int(e["label"]) for e in examples])


def image_examples(images: np.ndarray, labels: Sequence[int] | None = None) -> list[dict]:
    """Examples of an image array ``(N, H, W, C)``, with ``label`` when ``labels`` are given."""
    if labels is None:
        return [{"image": image} for image in images]
    return [{"image": image, "label": int(label)} for image, label in zip(images, labels, strict=True)]
