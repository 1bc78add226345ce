"""CoOp's published dataset sizes, torch-free: the workflow imports them to size jobs before
any dataset is on disk, and `pdiff check-data` compares what it finds with them."""

from __future__ import annotations

#: Classes and images per split of CoOp's splits (CoOp paper, dataset statistics table).
#: ImageNet's val is its test set, as in CoOp; the four variants are test only.
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "ImageNet": {"classes": 1000, "train": 1281167, "val": 50000, "test": 50000},
    "Caltech101": {"classes": 100, "train": 4128, "val": 1649, "test": 2465},
    "OxfordPets": {"classes": 37, "train": 2944, "val": 736, "test": 3669},
    "StanfordCars": {"classes": 196, "train": 6509, "val": 1635, "test": 8041},
    "OxfordFlowers": {"classes": 102, "train": 4093, "val": 1633, "test": 2463},
    "Food101": {"classes": 101, "train": 50500, "val": 20200, "test": 30300},
    "FGVCAircraft": {"classes": 100, "train": 3334, "val": 3333, "test": 3333},
    "SUN397": {"classes": 397, "train": 15880, "val": 3970, "test": 19850},
    "DescribableTextures": {"classes": 47, "train": 2820, "val": 1128, "test": 1692},
    "EuroSAT": {"classes": 10, "train": 13500, "val": 5400, "test": 8100},
    "UCF101": {"classes": 101, "train": 7639, "val": 1898, "test": 3783},
    "ImageNetV2": {"classes": 1000, "test": 10000},
    "ImageNetSketch": {"classes": 1000, "test": 50889},
    "ImageNetA": {"classes": 200, "test": 7500},
    "ImageNetR": {"classes": 200, "test": 30000},
}
