"""tapegrad-ctc: the CTC loss as a tapegrad plugin, and greedy CTC decoding."""

from .decode import greedy_decode
from .plugin import CTCLoss

__all__ = ["CTCLoss", "greedy_decode"]
__version__ = "0.3.0.dev0"  # the one copy: pyproject.toml reads this literal when building
