"""Turn a list of dataset items into what methods consume: frozen features and/or images.

Image features of the frozen encoder are computed once per stage (not once per step): the fast
path that makes textual methods cheap. Methods whose prompts enter the image encoder get images.
"""

from __future__ import annotations

import logging
import time

import torch

from pdiff.backbone import Backbone
from pdiff.data import DatasetSpec, Datum, load_images
from pdiff.errors import PdiffError
from pdiff.methods import Inputs

log = logging.getLogger(__name__)


def load_inputs(
    data_root: str,
    spec: DatasetSpec,
    data: list[Datum],
    backbone: Backbone,
    needs_images: bool,
    batch_size: int = 256,
) -> tuple[Inputs, torch.Tensor]:
    if not data:
        raise PdiffError(f"dataset {spec.name} has no images in this split; check its split file")
    t0 = time.time()
    images = load_images(spec.image_root(data_root), data, batch_size=batch_size)
    features = backbone.encode_images(images, batch_size=batch_size)
    labels = torch.tensor([d.label for d in data], device=backbone.device)
    log.info("%s: %d images encoded in %.1fs", spec.name, len(data), time.time() - t0)
    return Inputs(features, images if needs_images else None).to(backbone.device), labels
