"""CGaP: continuous growth and pruning of CNN channels during training."""

__version__ = "0.1.0"
