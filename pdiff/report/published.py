"""Published numbers of the host methods (CLIP ViT-B/16, 16 shots, 3 seeds), each with its source.

Only numbers read in a source are here: a method or a column that no source gave is left out
(`None`), never filled in. Each entry names the paper's table and where the numbers were read
(the stored copies of public repositories that reproduce those tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedB2N:
    """Base-to-new averages over the 11 datasets (HM from the averaged base and new)."""

    base: float
    new: float
    hm: float
    ref: str


@dataclass(frozen=True)
class PublishedTransfer:
    """A prompt learned on all ImageNet classes: its ImageNet accuracy and the average over the
    protocol's targets (10 datasets for cross-dataset, 4 ImageNet variants for DG)."""

    imagenet: float | None  # None: no source gave it
    average: float
    ref: str


def _mean(*values: float) -> float:
    return math.fsum(values) / len(values)


_COCOOP_T1 = "CoCoOp (Zhou et al., CVPR 2022) Table 1; read in muzairkhattak/PromptSRC README"
_MAPLE_T2 = "MaPLe (Khattak et al., CVPR 2023) Table 2; read in ThomasWangY/2024-AAAI-HPT README"
# HPT's README labels MaPLe's CoOp row "CLIP"; its values are CoOp's (ImageNet 71.51, as in
# MaPLe's Table 3, and average 63.88, CoOp's in muzairkhattak/ProText's README).
_MAPLE_T2_COOP = f"{_MAPLE_T2} (row labelled CLIP there)"
# MaPLe's Table 3 as reproduced there; the average is the mean of its four targets, computed
# here the way the report averages our own targets.
_MAPLE_T3 = (
    "MaPLe (Khattak et al., CVPR 2023) Table 3; read in ThomasWangY/2024-AAAI-HPT README; "
    "average = mean of the four targets"
)

#: method -> published base-to-new average.
PUBLISHED_B2N: dict[str, PublishedB2N] = {
    "zeroshot": PublishedB2N(69.34, 74.22, 71.70, _COCOOP_T1),
    "coop": PublishedB2N(82.69, 63.22, 71.66, _COCOOP_T1),
    "cocoop": PublishedB2N(80.47, 71.69, 75.83, _COCOOP_T1),
    "kgcoop": PublishedB2N(
        80.73, 73.60, 77.00, "KgCoOp (Yao et al., CVPR 2023) Table 1; read in htyao89/KgCoOp readme"
    ),
    "vpt": PublishedB2N(
        80.24, 73.43, 76.68,
        "MaPLe's deep vision prompting baseline; read in muzairkhattak/multimodal-prompt-learning "
        "README (model zoo)",
    ),
    "maple": PublishedB2N(
        82.28, 75.14, 78.55,
        "MaPLe (Khattak et al., CVPR 2023) Table 1; read in "
        "muzairkhattak/multimodal-prompt-learning README",
    ),
    "promptsrc": PublishedB2N(
        84.26, 76.10, 79.97,
        "PromptSRC (Khattak et al., ICCV 2023) Table 1; read in muzairkhattak/PromptSRC README",
    ),
}

#: protocol -> the targets its published average is over.
PUBLISHED_TARGETS = {
    "cross_dataset": "the 10 other datasets",
    "domain_generalization": "ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R",
}

#: protocol -> method -> published transfer numbers (ImageNet source). KgCoOp, VPT and
#: PromptSRC's domain generalisation are absent: no source read gave them.
PUBLISHED_TRANSFER: dict[str, dict[str, PublishedTransfer]] = {
    "cross_dataset": {
        "coop": PublishedTransfer(71.51, 63.88, _MAPLE_T2_COOP),
        "cocoop": PublishedTransfer(71.02, 65.74, _MAPLE_T2),
        "maple": PublishedTransfer(70.72, 66.30, _MAPLE_T2),
        "promptsrc": PublishedTransfer(
            None, 65.81,
            "PromptSRC (Khattak et al., ICCV 2023) Table 2, average only; read in "
            "muzairkhattak/ProText README",
        ),
    },
    "domain_generalization": {  # targets: ImageNetV2, -Sketch, -A, -R
        "zeroshot": PublishedTransfer(66.73, _mean(60.83, 46.15, 47.77, 73.96), _MAPLE_T3),
        "coop": PublishedTransfer(71.51, _mean(64.20, 47.99, 49.71, 75.21), _MAPLE_T3),
        "cocoop": PublishedTransfer(71.02, _mean(64.07, 48.75, 50.63, 76.18), _MAPLE_T3),
        "maple": PublishedTransfer(70.72, _mean(64.07, 49.15, 50.90, 76.98), _MAPLE_T3),
    },
}
