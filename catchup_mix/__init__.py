"""Catch-up Mix (Kang et al., AAAI 2024): the op, the mixing baselines, models with feature hooks,
data, training and evaluation. README.md says how to use each part."""

from . import baselines, methods, models  # baselines registers the saliency/transport methods
from .ops import catchup_mix_features, mixed_cross_entropy, mixed_targets, soft_target_loss

__all__ = ["baselines", "catchup_mix_features", "mixed_cross_entropy", "mixed_targets", "soft_target_loss",
           "methods", "models"]
__version__ = "0.1.0"
