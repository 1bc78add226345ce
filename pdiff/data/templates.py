"""CoOp's hand-crafted prompt templates and class-name clean-up.

The templates are copied verbatim from CoOp (``trainers/zsclip.py``, ``CUSTOM_TEMPLATES``) so
zero-shot and hand-crafted baselines stay comparable with published numbers.
"""

from __future__ import annotations

import re

from pdiff.errors import PdiffError

#: Template used when a dataset has no dedicated entry in :data:`TEMPLATES`.
GENERIC_TEMPLATE = "a photo of a {}."

#: CoOp's hand-crafted templates, keyed by CoOp's dataset class name.
TEMPLATES: dict[str, str] = {
    "generic": GENERIC_TEMPLATE,
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# Split between a lower-case letter/digit and an upper-case letter ("EyeMakeup" -> "Eye Makeup"),
# and inside acronym runs before a capitalised word ("TVShow" -> "TV Show").
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WHITESPACE = re.compile(r"\s+")


def template_for(dataset: str) -> str:
    """CoOp's template for ``dataset``, or the generic one for datasets CoOp does not cover."""
    return TEMPLATES.get(dataset, GENERIC_TEMPLATE)


def validate_template(template: str) -> str:
    """Return ``template`` unchanged if it holds exactly one ``{}`` placeholder.

    Checked up front because ``str.format`` would silently ignore a missing placeholder
    (every class would get the same prompt) or fail obscurely on extra ones.
    """
    if not isinstance(template, str) or template.count("{}") != 1:
        raise PdiffError(
            f"prompt template {template!r} must contain exactly one '{{}}' placeholder for the "
            "class name; fix the dataset's `template` in the config, e.g. 'a photo of a {}.'"
        )
    return template


def format_prompt(template: str, classname: str) -> str:
    """Fill ``template``'s single ``{}`` with ``classname``.

    ``str.replace`` rather than ``str.format`` so templates may contain other braces.
    """
    return validate_template(template).replace("{}", classname)


def clean_classname(name: str, camel: bool = False) -> str:
    """Normalise a folder-style class name into words for a prompt.

    Underscores become spaces, whitespace is collapsed and stripped. With ``camel=True``
    CamelCase words are split too (UCF101-style ``"ApplyEyeMakeup"`` -> ``"Apply Eye Makeup"``);
    it is opt-in because it would mangle names such as ``"iPhone"`` or ``"McDonald"``.
    """
    name = name.replace("_", " ")
    if camel:
        name = _CAMEL_BOUNDARY.sub(" ", name)
    return _WHITESPACE.sub(" ", name).strip()
