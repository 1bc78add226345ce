"""`pdiff prepare`: write the demo or rehearsal world under the data root (rule prepare)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_data_root, add_params

NAME = "prepare"
HELP = ("generate the demo world (world.kind synthetic, the default) or the rehearsal world "
        "(rehearsal: the 15 benchmark datasets)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params(p, "the `world` config")
    add_data_root(p)
    p.add_argument("--manifest", required=True, help="JSON written last, when all is done")


def run(args: argparse.Namespace) -> None:
    from pdiff.errors import PdiffError
    from pdiff.utils import write_json

    kind = args.params.get("kind", "synthetic")
    if kind == "rehearsal":
        from pdiff.data.rehearsal import write_rehearsal as write
    elif kind == "synthetic":
        from pdiff.data.synthetic import write_world as write
    else:  # a config value, not a usage error: reported like the stages' other bad input
        raise PdiffError(f"unknown world.kind {kind!r}; use synthetic or rehearsal")
    write_json(args.manifest, write(args.data_root, args.params))
