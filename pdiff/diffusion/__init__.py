"""The diffusion side of pdiff: a DiT over packed prompt tokens, its objectives,
ODE sampling, target normalisation and training."""

from pdiff.diffusion.dit import PromptDiT
from pdiff.diffusion.normalise import TargetNormaliser
from pdiff.diffusion.objective import FlowMatching, Objective, VPDiffusion, get_objective
from pdiff.diffusion.sampler import integrate, sample
from pdiff.diffusion.trainer import DiffusionModel, fit_diffusion, load_diffusion, save_diffusion

__all__ = [
    "DiffusionModel",
    "FlowMatching",
    "Objective",
    "PromptDiT",
    "TargetNormaliser",
    "VPDiffusion",
    "fit_diffusion",
    "get_objective",
    "integrate",
    "load_diffusion",
    "sample",
    "save_diffusion",
]
