"""Typed configuration: each config section a stage reads is one frozen dataclass, whose field
defaults are pdiff's only defaults.

The classes live beside the code they configure (so a stage's code fingerprint covers its
defaults): ``OverfitConfig`` in :mod:`pdiff.overfit`, ``DiffusionConfig`` in
:mod:`pdiff.diffusion.config`, ``SamplingConfig`` in :mod:`pdiff.diffusion.sampler`,
``EvaluationConfig`` in :mod:`pdiff.evaluate`, a method block's training recipe
(``TrainConfig``) in :mod:`pdiff.methods.base` and each host method's own keys in its module.

A stage reads its ``--params`` mapping with :meth:`Config.from_dict`, which names any unknown key,
missing required key or value of the wrong type. The workflow schema accepts exactly these keys,
and a default it states is this one (``tests/test_config.py``). A rule's params hold only what the
config sets, so a default chosen here never changes a job's params: the stage fills it in.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pdiff.errors import PdiffError

C = TypeVar("C", bound="Config")


@dataclass(frozen=True)
class Config:
    """Base of the config dataclasses: reading and checking one config mapping."""

    #: Where the mapping lives in the workflow config, for messages.
    SECTION: ClassVar[str] = ""

    @classmethod
    def keys(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Key -> default, for the keys that have one."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def from_dict(
        cls: type[C], params: Mapping[str, Any], where: str = "", also: Iterable[str] = ()
    ) -> C:
        """Check and read ``params``; ``also`` names keys of the same mapping that other code
        reads (a method block holds the training recipe and the method's own keys)."""
        where = where or cls.SECTION
        if not isinstance(params, Mapping):
            raise PdiffError(f"{where} must be a mapping, got {type(params).__name__}")
        known = cls.keys() | set(also)
        unknown = sorted(set(params) - known)
        if unknown:
            raise PdiffError(
                f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)} "
                "(config/README.md)"
            )
        missing = sorted(cls.keys() - cls.defaults().keys() - set(params))
        if missing:
            raise PdiffError(f"{where} lacks {missing}; set them in the config")
        hints = get_type_hints(cls)
        for key in sorted(cls.keys() & set(params)):
            if not _fits(params[key], hints[key]):
                raise PdiffError(
                    f"{where}.{key} must be {_describe(hints[key])}, got {params[key]!r}"
                )
        return cls(**{k: params[k] for k in cls.keys() if k in params})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fits(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool):  # bool is an int subclass, never a number here
        return hint is bool
    if hint is int:  # JSON schema's integer takes 5.0 too
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             type(None): "null"}
    return names.get(hint, str(hint))


def positive(where: str, **values: Any) -> None:
    """Raise a PdiffError naming the first of ``values`` that is set and below 1."""
    for key, value in values.items():
        if value is not None and value < 1:
            raise PdiffError(f"{where}.{key} must be a positive integer, got {value}")
