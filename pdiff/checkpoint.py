"""Prompt checkpoints: only the learnable parameters plus the identity of the backbone.

Stored as safetensors (safe to load anywhere) with one JSON metadata entry holding the method,
its hyper-parameters, the backbone identity and provenance (dataset, classes, seed, history).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from safetensors.torch import save_file

from pdiff import __version__
from pdiff.errors import PdiffError
from pdiff.utils import atomic_path

if TYPE_CHECKING:  # reading a checkpoint's metadata needs neither open_clip nor the methods
    from pdiff.backbone import Backbone
    from pdiff.methods import PromptMethod


def save_prompt(path: str | Path, method: PromptMethod, meta: dict) -> None:
    meta = {
        **meta,
        "method": method.name,
        "params": method.params,
        "template": method.template,
        "backbone": method.backbone.identity,
        "prompt_spec": method.layout.to_json(),
        "pdiff_version": __version__,
    }
    with atomic_path(path) as tmp:
        save_file(method.learnable_state(), str(tmp), metadata={"pdiff": json.dumps(meta)})


def read_prompt_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PdiffError(f"prompt checkpoint {path} not found; create it with `pdiff train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["pdiff"])
    except Exception as exc:
        raise PdiffError(f"{path} is not a pdiff prompt checkpoint ({exc}); rerun `pdiff train`"
                         ) from exc


def load_prompt(path: str | Path, backbone: Backbone, classnames: list[str] | None = None
                ) -> tuple[PromptMethod, dict]:
    """Rebuild the method around `backbone` and load its learned parameters."""
    from pdiff.backbone import check_identity
    from pdiff.methods import get_method

    meta = read_prompt_meta(path)
    check_identity(backbone.identity, meta["backbone"], f"prompt checkpoint {path}")
    cls = get_method(meta["method"])
    method = cls(backbone, classnames or meta["classnames"], meta["template"], meta["params"])
    with safe_open(str(path), framework="pt", device=str(backbone.device)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    method.load_state_dict(state, strict=False)
    missing = set(method.learnable_state()) - set(state)
    if missing:
        raise PdiffError(f"{path} lacks parameters {sorted(missing)}; rerun `pdiff train`")
    return method, meta
