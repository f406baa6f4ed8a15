"""The shipped image data (a CIFAR-10 subset) for the vision study: checked loading and fixed splits.

``data/cifar10/cifar10_subset_500x10_train_100x10_test.npz`` holds 5,000 train and 1,000 test 32x32 RGB images
(uint8, HWC), 500 and 100 per class. :func:`load_image_splits` deals the train images per class, in file order,
into ``central`` (first 100 of each class: the held-out images the offline starting model is pre-trained on),
``dev`` (next 50) and ``train`` (last 350); the test images are the ``test`` split. Within every split the
classes are interleaved (the first image of each class, then the second of each, ...), so that any prefix, as
``max_examples`` takes, is class-balanced. Nothing is random, so every machine gets the same splits.

``cifar10-4`` keeps the file's first four classes (airplane, automobile, bird, cat; labels 0-3), dealt the same
way: a task a small ViT learns on a CPU within the vision study's time (chance 0.25).

Image corpora (unlabelled pools for masked image modelling) are named parts of a data set:
``cifar10`` and ``cifar10-4`` (their ``train`` parts) and ``cifar10-central`` (the ``central`` part).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from fedbt.errors import ConfigError, DataError


@dataclass(frozen=True)
class ImageDataSpec:
    """Where an image data set lives and what its file must hold."""

    name: str
    folder: str
    file: str
    file_classes: tuple[str, ...]
    """The classes the file holds (label = index)."""
    classes: tuple[str, ...]
    """The classes this data set keeps, relabelled 0, 1, ... in this order."""
    image_shape: tuple[int, int, int]
    train_per_class: int
    test_per_class: int
    parts: tuple[tuple[str, int], ...]
    """How each class's train images are dealt, in order: (part name, images per class)."""


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10 = ImageDataSpec(
    name="cifar10",
    folder="cifar10",
    file="cifar10_subset_500x10_train_100x10_test.npz",
    file_classes=CIFAR10_CLASSES,
    classes=CIFAR10_CLASSES,
    image_shape=(32, 32, 3),
    train_per_class=500,
    test_per_class=100,
    parts=(("central", 100), ("dev", 50), ("train", 350)),
)
CIFAR10_4 = replace(CIFAR10, name="cifar10-4", classes=CIFAR10_CLASSES[:4])
IMAGE_DATA = {spec.name: spec for spec in (CIFAR10, CIFAR10_4)}

IMAGE_CORPORA: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10", "train"),
    "cifar10-4": ("cifar10-4", "train"),
    "cifar10-central": ("cifar10", "central"),
}
"""Corpus name -> (data set, part): unlabelled image pools for masked image modelling."""


@dataclass(frozen=True)
class ImageSplit:
    """Images (N, H, W, C) uint8 and their integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _check(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise DataError(f"{path}: {message}")


def interleave_classes(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``indices`` reordered round-robin over classes (ascending class id), each class keeping its order."""
    rank = np.zeros(len(indices), dtype=np.int64)
    for label in np.unique(labels[indices]):
        members = labels[indices] == label
        rank[members] = np.arange(members.sum())
    return indices[np.lexsort((labels[indices], rank))]


def deal_parts(labels: np.ndarray, parts: tuple[tuple[str, int], ...], num_classes: int) -> dict[str, np.ndarray]:
    """Indices of each part: per class in index order, the first ``n_1`` to part 1, the next ``n_2`` to part 2 ...
    Each part lists its indices with the classes interleaved (:func:`interleave_classes`)."""
    dealt: dict[str, list[int]] = {name: [] for name, _ in parts}
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        start = 0
        for name, count in parts:
            dealt[name] += members[start : start + count].tolist()
            start += count
    return {name: interleave_classes(np.array(sorted(idx), dtype=np.int64), labels) for name, idx in dealt.items()}


@cache
def _load(name: str, data_dir: str) -> dict[str, ImageSplit]:
    spec = IMAGE_DATA[name]
    path = Path(data_dir) / spec.folder / spec.file
    if not path.is_file():
        raise DataError(f"{path}: image data file not found (the repository's data/ folder ships it)")
    with np.load(path, allow_pickle=False) as archive:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
        _check(not missing, path, f"missing arrays {sorted(missing)}")
        arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    num_classes = len(spec.file_classes)
    for split, per_class in (("train", spec.train_per_class), ("test", spec.test_per_class)):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check(images.dtype == np.uint8, path, f"x_{split} has dtype {images.dtype}, expected uint8")
        _check(
            images.shape == (num_classes * per_class, *spec.image_shape),
            path,
            f"x_{split} has shape {images.shape}, expected {(num_classes * per_class, *spec.image_shape)}",
        )
        _check(len(labels) == len(images), path, f"y_{split} has {len(labels)} labels for {len(images)} images")
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        _check(not len(bad), path, f"y_{split}[{bad[0] if len(bad) else 0}] is not a class id 0..{num_classes - 1}")
        counts = np.bincount(labels, minlength=num_classes)
        _check(bool((counts == per_class).all()), path, f"y_{split} has {counts.tolist()} images per class")
    for split in ("train", "test"):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _keep_classes(spec, arrays[f"x_{split}"], arrays[f"y_{split}"])
    parts = deal_parts(arrays["y_train"], spec.parts, len(spec.classes))
    splits = {part: ImageSplit(arrays["x_train"][idx], arrays["y_train"][idx]) for part, idx in parts.items()}
    test = interleave_classes(np.arange(len(arrays["y_test"])), arrays["y_test"])
    splits["test"] = ImageSplit(arrays["x_test"][test], arrays["y_test"][test])
    return splits


def _keep_classes(spec: ImageDataSpec, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``spec.classes`` only, in file order, relabelled by their position in ``spec.classes``."""
    if spec.classes == spec.file_classes:
        return images, labels
    relabel = np.full(len(spec.file_classes), -1, dtype=np.int64)
    for new, name in enumerate(spec.classes):
        relabel[spec.file_classes.index(name)] = new
    kept = relabel[labels] >= 0
    return images[kept], relabel[labels[kept]]


def load_image_splits(name: str, data_dir: str | Path = "data", key: str = "data.task") -> dict[str, ImageSplit]:
    """The checked parts of image data set ``name``: ``central``, ``dev``, ``train``, ``test``.

    An unknown name is a :class:`ConfigError` on ``key``; a missing or malformed file a :class:`DataError`.
    """
    if name not in IMAGE_DATA:
        raise ConfigError(key, f"unknown image data set {name!r}; known: {', '.join(IMAGE_DATA)}")
    return _load(name, str(Path(data_dir)))


def load_image_corpus(name: str, data_dir: str | Path = "data", key: str = "data.corpus") -> ImageSplit:
    """The images (and labels, for label-skew partitions) of image corpus ``name``."""
    if name not in IMAGE_CORPORA:
        raise ConfigError(key, f"unknown image corpus {name!r}; known: {', '.join(IMAGE_CORPORA)}")
    data_set, part = IMAGE_CORPORA[name]
    return load_image_splits(data_set, data_dir, key)[part]
