"""pdiff: prompt diffusion for CLIP prompt learning."""

__version__ = "0.1.0"
