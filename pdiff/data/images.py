"""Image loading for datasets whose items are :class:`~pdiff.data.coop.Datum` objects."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_tensor

from pdiff.data.coop import Datum
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and convert it to RGB.

    ``Image.open`` is lazy, so ``convert`` runs here to surface truncated/corrupt files now,
    with a message naming the file, rather than deep inside a DataLoader worker.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise PdiffError(
            f"image {path} is missing; restore it (or remove it from the split file) and run "
            "`pdiff check-data`"
        ) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PdiffError(
            f"image {path} is unreadable ({e}); re-create or remove it and run `pdiff check-data`"
        ) from e


class ImageDataset(Dataset):
    """Images of a list of Datum under ``image_root``; items are ``(image, label, index)``.

    The index lets callers map features back to ``data`` after shuffling/batching. Without a
    transform images become float tensors in [0, 1] (CHW).
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        data: list[Datum],
        transform: Transform | None = None,
    ) -> None:
        self.image_root = Path(image_root)
        self.data = list(data)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        datum = self.data[index]
        image = load_image(self.image_root / datum.impath)
        x = self.transform(image) if self.transform is not None else to_tensor(image)
        return x, datum.label, index


def load_images(
    image_root: str | os.PathLike,
    data: list[Datum],
    transform: Transform | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> torch.Tensor:
    """Load all images of ``data`` (in order) into one ``[N, 3, H, W]`` tensor.

    Meant for small datasets such as the demo's 32x32 PNGs; images must share a size, so pass a
    resizing transform (e.g. the CLIP preprocess) for real datasets.
    """
    if not data:
        raise PdiffError(
            f"no images to load from {image_root}: the item list is empty; check the split "
            "or few-shot file and the subsample setting"
        )
    loader = DataLoader(
        ImageDataset(image_root, data, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    batches: list[torch.Tensor] = []
    try:
        for x, _, _ in loader:
            batches.append(x)
    except RuntimeError as e:
        # default_collate's torch.stack fails when images differ in size.
        raise PdiffError(
            f"cannot batch images from {image_root} ({e}); they differ in size, pass a transform "
            "that resizes them (e.g. the model's preprocess)"
        ) from e
    images = torch.cat(batches)
    log.debug(
        "loaded %d images of shape %s from %s", len(images), tuple(images.shape[1:]), image_root
    )
    return images
