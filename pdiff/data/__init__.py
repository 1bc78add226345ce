"""Datasets in the CoOp/Dassl layout: split reading, few-shot draws, templates.

Torch-free, so that the stages that only read splits (check-data, fewshot) start without it;
image loading (torch's Dataset and DataLoader) lives in `pdiff.data.images`."""

from pdiff.data.catalogue import (
    DEFAULT_FORMAT,
    FORMATS,
    KNOWN_DATASETS,
    SPLITS,
    DatasetSpec,
    DatasetSplits,
    Datum,
)
from pdiff.data.fewshot import (
    MAX_VAL_SHOTS,
    class_subset,
    draw_fewshot,
    fewshot_data,
    generate_fewshot,
    limit_draw,
    limited,
    load_fewshot,
    save_fewshot,
    split_by_label,
    subsample_classes,
)
from pdiff.data.readers import read_split
from pdiff.data.templates import (
    GENERIC_TEMPLATE,
    TEMPLATES,
    clean_classname,
    format_prompt,
    template_for,
    validate_template,
)

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "GENERIC_TEMPLATE",
    "KNOWN_DATASETS",
    "MAX_VAL_SHOTS",
    "SPLITS",
    "TEMPLATES",
    "DatasetSpec",
    "DatasetSplits",
    "Datum",
    "class_subset",
    "clean_classname",
    "draw_fewshot",
    "fewshot_data",
    "format_prompt",
    "generate_fewshot",
    "limit_draw",
    "limited",
    "load_fewshot",
    "read_split",
    "save_fewshot",
    "split_by_label",
    "subsample_classes",
    "template_for",
    "validate_template",
]
