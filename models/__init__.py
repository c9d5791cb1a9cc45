"""Model families for scaleladder: GPT-NeoX and CLIP in pure PyTorch, their data and their accounting."""

from models.family import DATA_CONFIGS, FAMILIES, ModelFamily, build_family

__all__ = ["DATA_CONFIGS", "FAMILIES", "ModelFamily", "build_family"]
