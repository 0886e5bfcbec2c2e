"""`moai-export train`: MoAI's LoRA recipe on sentence-transformers' trainer (see run.py)."""

from .options import TrainOptions
from .run import train

__all__ = ["TrainOptions", "train"]
