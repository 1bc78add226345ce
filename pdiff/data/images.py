"""Image loading: any file the readers list, streamed through a DataLoader.

Nothing here holds a split's decoded images: a :class:`ImageDataset` opens one file per item
and applies the model's own transform (open_clip's preprocessing, or the training
augmentation), and :func:`image_loader` batches it with workers.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from pdiff.data.catalogue import Datum
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and convert it to RGB, whatever its mode (L, P, RGBA, CMYK, ...).

    ``Image.open`` is lazy, so ``convert`` runs here to surface truncated/corrupt files now,
    with a message naming the file, rather than deep inside a DataLoader worker.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            # A palette with transparency converts through RGBA (PIL warns otherwise).
            if im.mode == "P" and "transparency" in im.info:
                return im.convert("RGBA").convert("RGB")
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


def item_seed(seed: int, draw: int, index: int) -> int:
    """The RNG seed of one random transform of one image: a function of (seed, draw, index)
    alone, so augmented pixels do not depend on worker count, batch size or order."""
    return zlib.crc32(f"{seed}:{draw}:{index}".encode())


class ImageDataset(Dataset):
    """Images of a list of Datum under ``image_root``; items are ``(pixels, label, index)``.

    Indexed by ``index`` or by ``(index, draw)``: a random transform (augmentation) then runs
    under a seed of (seed, draw, index), the same in any worker, so one draw of an epoch is
    reproducible and the next draw differs.
    """

    def __init__(self, image_root: str | os.PathLike, data: Sequence[Datum],
                 transform: Transform, seed: int = 0) -> None:
        self.image_root = Path(image_root)
        self.data = list(data)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        datum = self.data[index]
        image = load_image(self.image_root / datum.impath)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, draw, index))
            x = self.transform(image)
        return x, datum.label, index


def image_loader(dataset: ImageDataset, order: Iterable[int | tuple[int, int]] | None = None,
                 batch_size: int = 64, workers: int = 0) -> DataLoader:
    """Batches of ``(pixels [B,3,H,W], labels [B], indices [B])`` in ``order`` (default: the
    list's order); ``workers`` decode in parallel processes (the rule's threads) when there is
    more than one batch to overlap."""
    if not len(dataset):
        raise PdiffError(
            f"no images to load from {dataset.image_root}: the item list is empty; check the "
            "split or few-shot file and the subsample setting"
        )
    order = list(range(len(dataset))) if order is None else list(order)
    return DataLoader(dataset, batch_size=batch_size, sampler=order,
                      num_workers=workers if len(order) > batch_size else 0)
