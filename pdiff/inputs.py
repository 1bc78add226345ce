"""A list of a dataset's images as the stages read it: streamed, never held whole.

Methods on frozen features (CoOp, CoCoOp, KgCoOp, zero-shot) read them from the workflow's
feature cache (:mod:`pdiff.features`) or, without one, encode them batch by batch; methods whose
prompts enter the image encoder get pixels streamed through a DataLoader, with the cached
feature as their diffusion condition. Few-shot lists (at most shots x classes images) may keep
their features in memory; test splits are read batch by batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pdiff.backbone import Backbone
from pdiff.data import DatasetSpec, Datum
from pdiff.data.images import ImageDataset, image_loader, item_seed
from pdiff.errors import PdiffError
from pdiff.features import FeatureFile, FeatureTable, encode_all
from pdiff.methods import Inputs

log = logging.getLogger(__name__)

Batch = tuple[Inputs, torch.Tensor, torch.Tensor]  # inputs, labels [B], indices into the list


@dataclass
class ImageList:
    """`data` of one dataset under `image_root`, optionally backed by a feature-cache part."""

    backbone: Backbone
    image_root: Path
    data: list[Datum]
    cache: FeatureTable | None = None
    batch_size: int = 64
    workers: int = 0
    seed: int = 0
    _held: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise PdiffError(f"no images in {self.image_root} for this split: the item list "
                             "is empty; check the split or few-shot file and the class subset")
        self.rows = self.cache.rows(self.data) if self.cache is not None else None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([d.label for d in self.data])

    def features(self) -> torch.Tensor:
        """Frozen features [N, E] of the whole list, kept for later batches (few-shot lists)."""
        if self._held is None:
            if self.cache is not None:
                self._held = self.cache.read(self.rows)
            else:
                self._held = torch.from_numpy(encode_all(
                    self.backbone, self._dataset(None), self.batch_size, self.workers)[0])
        return self._held

    def _dataset(self, augment: dict | None) -> ImageDataset:
        return ImageDataset(self.image_root, self.data, self.backbone.transform(augment),
                            self.seed)

    def _cached(self, index: np.ndarray, augment: dict | None, draw: int) -> torch.Tensor:
        """Cached features of `index`: the eval view, or one augmented view per image."""
        if not augment:
            if self._held is not None:
                return self._held[torch.from_numpy(index)]
            return self.cache.read(self.rows[index])
        views = self.cache.read(self.rows[index], "augmented")
        pick = [item_seed(self.seed, draw, int(i)) % views.shape[1] for i in index]
        return views[torch.arange(len(index)), torch.tensor(pick)]

    def batches(self, needs_images: bool, order: Sequence[int] | None = None,
                batch_size: int | None = None, augment: dict | None = None, draw: int = 0
                ) -> Iterator[Batch]:
        """Batches in `order` (default: the list's). With `augment`, every image is a random
        view of draw `draw` (an epoch): cached views for features, fresh crops for pixels."""
        order = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
        bs = batch_size or self.batch_size
        labels, device = self.labels, self.backbone.device
        cached_views = self.cache is not None and (not augment or self.cache.views > 0)
        if not needs_images and (cached_views or (self._held is not None and not augment)):
            for i in range(0, len(order), bs):
                index = order[i : i + bs]
                yield (Inputs(self._cached(index, augment, draw)).to(device),
                       labels[index].to(device), torch.from_numpy(index))
            return
        loader = image_loader(self._dataset(augment), [(int(i), draw) for i in order], bs,
                              self.workers)
        for pixels, label, index in loader:
            if augment or (self.cache is None and self._held is None):
                feats = None if needs_images else self.backbone.encode_images(pixels)
            else:
                feats = self._cached(index.numpy(), None, draw)
            yield (Inputs(feats, pixels if needs_images else None).to(device),
                   label.to(device), index)


def image_list(backbone: Backbone, data_root: str, spec: DatasetSpec, data: list[Datum],
               features: str | None = None, part: str = "test", batch_size: int = 64,
               workers: int = 0, seed: int = 0) -> ImageList:
    """The stages' entry point: `data` of `spec`, read through the cache file `features`
    (its `part`) when the workflow made one."""
    cache = FeatureFile(features, backbone.identity).part(part) if features else None
    return ImageList(backbone, spec.image_root(data_root), data, cache, batch_size, workers,
                     seed)
