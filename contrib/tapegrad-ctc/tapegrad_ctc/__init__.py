"""tapegrad-ctc: the CTC loss as a tapegrad plugin."""

from .plugin import CTCLoss

__all__ = ["CTCLoss"]
__version__ = "0.2.0"  # the one copy: pyproject.toml reads this literal when building
