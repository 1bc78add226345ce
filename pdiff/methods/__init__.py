"""The registry of host prompt-learning methods: one module per method, registered by name."""

from __future__ import annotations

from pdiff.errors import PdiffError
from pdiff.methods.base import Anchor, Inputs, PromptMethod, Prompts
from pdiff.methods.cocoop import CoCoOp
from pdiff.methods.coop import CoOp
from pdiff.methods.kgcoop import KgCoOp
from pdiff.methods.maple import MaPLe
from pdiff.methods.promptsrc import PromptSRC
from pdiff.methods.vpt import VPT
from pdiff.methods.zeroshot import ZeroShot

METHODS: dict[str, type[PromptMethod]] = {
    m.name: m for m in (ZeroShot, CoOp, CoCoOp, KgCoOp, VPT, MaPLe, PromptSRC)
}


def get_method(name: str) -> type[PromptMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise PdiffError(
            f"unknown method '{name}'; available: {', '.join(sorted(METHODS))} "
            "(add one in pdiff/methods/ and register it here)"
        ) from None


__all__ = ["METHODS", "Anchor", "Inputs", "PromptMethod", "Prompts", "get_method"]
