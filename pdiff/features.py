"""The frozen-feature cache (`pdiff features`): image features computed once per list of images.

Every method, seed and mode that needs only frozen image features of a list (a dataset's test
split, or the few-shot draw of a seed) reads them from one HDF5 file instead of decoding the
same images again; methods that prompt the image encoder still stream pixels, and read their
conditioning features here.

Layout: one group per part (``test``, or ``train`` and ``val`` of a few-shot draw), each with

=============  ===========  ===============================================================
dataset        shape        meaning
=============  ===========  ===============================================================
``impaths``    [N]          UTF-8 image path relative to the dataset's image folder
``labels``     [N]          int64 label (of the whole dataset's label space)
``features``   [N, E]       float32 L2-normalised feature of open_clip's eval preprocessing
``augmented``  [N, V, E]    float32, train part only, ``augment.views`` > 0: V augmented views
=============  ===========  ===============================================================

Attributes: ``backbone`` (JSON identity), ``dataset``, ``augment`` (JSON), ``version``.
Written to a side file and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from pdiff.backbone import Backbone, check_identity
from pdiff.data import Datum
from pdiff.data.images import ImageDataset, image_loader
from pdiff.errors import PdiffError
from pdiff.utils import atomic_path

log = logging.getLogger(__name__)

VERSION = 1
CHUNK_ROWS = 256  # rows read per h5py chunk: one evaluation batch touches one or two


def views_of(augment: dict | None) -> int:
    """Augmented views cached per training image (0: augmentation off, or fresh crops)."""
    return int(augment.get("views", 0)) if augment and augment.get("enabled") else 0


@torch.no_grad()
def encode_all(backbone: Backbone, dataset: ImageDataset, batch_size: int, workers: int,
               draws: Sequence[int] = (0,), desc: str = "features") -> np.ndarray:
    """Features [len(draws), N, E] of every item under every draw (one random view each),
    streamed through one DataLoader batch by batch (only the features are kept)."""
    n = len(dataset)
    out = np.empty((len(draws) * n, backbone.embed_dim), dtype=np.float32)
    order = [(i, d) for d in draws for i in range(n)]
    done = 0
    for pixels, _, _ in tqdm(image_loader(dataset, order, batch_size, workers), desc=desc,
                             mininterval=10):
        out[done : done + len(pixels)] = backbone.encode_images(pixels).cpu().numpy()
        done += len(pixels)
    return out.reshape(len(draws), n, -1)


def write_features(out: str | os.PathLike, backbone: Backbone, image_root: Path, dataset: str,
                   parts: dict[str, Sequence[Datum]], augment: dict | None, batch_size: int,
                   workers: int) -> None:
    """Encode every part's images (and the train part's augmented views) into `out`."""
    plain = backbone.transform()
    views = views_of(augment)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["version"] = VERSION
        h5.attrs["backbone"] = json.dumps(backbone.identity, sort_keys=True)
        h5.attrs["dataset"] = dataset
        h5.attrs["augment"] = json.dumps(augment or {}, sort_keys=True)
        for name, data in parts.items():
            g = h5.create_group(name)
            g.create_dataset("impaths", data=[d.impath for d in data],
                             dtype=h5py.string_dtype("utf-8"))
            g.create_dataset("labels", data=np.array([d.label for d in data], dtype=np.int64))
            feats = encode_all(backbone, ImageDataset(image_root, data, plain), batch_size,
                               workers, desc=f"{dataset}/{name}")[0]
            g.create_dataset("features", data=feats, chunks=(min(CHUNK_ROWS, len(data)),
                                                             feats.shape[1]))
            if name == "train" and views:
                aug = ImageDataset(image_root, data, backbone.transform(augment))
                g.create_dataset("augmented", data=encode_all(
                    backbone, aug, batch_size, workers, range(views),
                    f"{dataset}/{name}, {views} views").transpose(1, 0, 2))
    log.info("cached features of %s (%s) in %s", dataset, ", ".join(
        f"{k}: {len(v)}" for k, v in parts.items()), out)


@dataclass
class FeatureTable:
    """One part of a feature file, open for reading rows."""

    group: h5py.Group
    path: Path

    def rows(self, data: Sequence[Datum]) -> np.ndarray:
        """The row of each item of `data` (a subset of the part, e.g. its base classes)."""
        index = {p: i for i, p in enumerate(self.group["impaths"].asstr()[:])}
        try:
            return np.array([index[d.impath] for d in data], dtype=np.int64)
        except KeyError as e:
            raise PdiffError(
                f"feature cache {self.path} has no row for image {e.args[0]}: it was made "
                "from another split or few-shot draw; delete it and rerun the workflow"
            ) from None

    def read(self, rows: np.ndarray, name: str = "features") -> torch.Tensor:
        """Rows of `name` in the given order (h5py reads increasing indices; re-ordered)."""
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        block = self.group[name][uniq] if len(uniq) else np.empty((0,))
        out = np.empty((len(rows), *block.shape[1:]), dtype=np.float32)
        out[order] = block[inverse]
        return torch.from_numpy(out)

    @property
    def views(self) -> int:
        return self.group["augmented"].shape[1] if "augmented" in self.group else 0


class FeatureFile:
    """A feature cache checked against the backbone that reads it."""

    def __init__(self, path: str | os.PathLike, backbone_identity: dict) -> None:
        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as e:
            raise PdiffError(f"feature cache {self.path} is missing or unreadable ({e}); "
                             "rerun `pdiff features` (the workflow's features rule)") from e
        found = json.loads(self.h5.attrs.get("backbone", "{}"))
        check_identity(backbone_identity, found, f"feature cache {self.path}")

    def part(self, name: str) -> FeatureTable:
        if name not in self.h5:
            raise PdiffError(f"feature cache {self.path} has no part '{name}' (it has "
                             f"{', '.join(self.h5)}); rebuild it with `pdiff features`")
        return FeatureTable(self.h5[name], self.path)


def features_stage(*, backbone_spec: dict, data_root: str, dataset: dict, out: str,
                   fewshot: str | None = None, augment: dict | None = None,
                   batch_size: int = 64, workers: int = 0, max_images: int | None = None
                   ) -> None:
    """`pdiff features`: the test split of `dataset` (all classes; at most `max_images`, the
    subset evaluation reads), or with `fewshot` the draw's train and val images (the train
    part with its augmented views)."""
    from pdiff.backbone import load_backbone
    from pdiff.data import DatasetSpec, fewshot_data, limited, load_fewshot, read_split
    from pdiff.utils import get_device

    spec = DatasetSpec.from_dict(dataset)
    if fewshot:
        draw = load_fewshot(fewshot)
        parts = {p: fewshot_data(draw, p) for p in ("train", "val")}
    else:
        parts = {"test": limited(read_split(data_root, spec, with_train=False).test,
                                 max_images)}
        augment = None  # augmentation is for training images only
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        raise PdiffError(f"dataset {spec.name} has no images to encode here; check its split "
                         "file or few-shot draw")
    backbone = load_backbone(backbone_spec, get_device())
    write_features(out, backbone, spec.image_root(data_root), spec.name, parts, augment,
                   batch_size, workers)
