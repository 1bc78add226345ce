"""Time per DiT training step: the whole demo's DiT (4 blocks of width 128) against the quick
demo's (2 blocks of width 64), on a store of the demo's CoOp shape (16 tokens x 128).

Not an exact fast path (the two DiTs learn different functions; config/selection.yaml compares
what they generate): this measures what the quick demo's DiT saves per step. Both train in one
process, interleaved in rounds of `--steps` steps, from the same store and seed.

    python benchmarks/dit_step.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import types

import numpy as np
import torch
from _common import add_device_args, interleaved, setup, table

from pdiff.diffusion.config import DiffusionConfig
from pdiff.diffusion.trainer import TrainState

#: (name, depth, width): the DiTs of config/config.yaml and config/quick.yaml.
DITS = [("whole demo (4 x 128)", 4, 128), ("quick demo (2 x 64)", 2, 64)]


def fake_store(n: int, tokens: int, dim: int, feature_dim: int) -> types.SimpleNamespace:
    """The fields `TrainState` reads from a prompt store, random."""
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        token_mask=None, prompts=rng.normal(size=(n, tokens, dim)).astype("f4"),
        init_prompt=rng.normal(size=(tokens, dim)).astype("f4"),
        features=rng.normal(size=(n, feature_dim)).astype("f4"),
        labels=rng.integers(0, 24, n), token_shape=(tokens, dim), num_samples=n,
        feature_dim=feature_dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="training steps per round and DiT")
    ap.add_argument("--samples", type=int, default=384, help="prompts in the store")
    add_device_args(ap)
    args = ap.parse_args()
    setup(args.threads)
    store = fake_store(args.samples, 16, 128, 128)
    runs = {}
    for name, depth, width in DITS:
        cfg = DiffusionConfig.from_dict({"depth": depth, "width": width, "heads": 4,
                                         "steps": 10**6, "batch_size": 64, "lr": 0.008})
        runs[name] = TrainState(store, cfg.resolved(), seed=0, cls_loss=None,
                                device=torch.device(args.device))

    def steps(run: TrainState) -> None:
        for _ in range(args.steps):
            run.train_step()
            run.update_ema()
            run.step += 1

    timing = interleaved({name: (lambda r=run: steps(r)) for name, run in runs.items()},
                         args.rounds)
    (big, _, _), (small, _, _) = DITS
    print(f"DiT training steps, batch 64, 16 x 128 prompts, {args.device}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds of {args.steps} steps")
    print(table(["DiT", "ms / step"],
                [[name, 1e3 * timing.median(name) / args.steps] for name, _, _ in DITS]))
    print(f"ratio: {timing.ratio(big, small):.2f}x")


if __name__ == "__main__":
    main()
