"""The plugin the entry point ``ctc`` names: CTCLoss (``plugin.py``) and the ``ctc-digits`` runnable model
(``tasks.py``; its LSTM comes from tapegrad-rnn), so that blocking the plugin blocks the model too."""

from __future__ import annotations

import tapegrad as tg
from tapegrad.tasks import Task

from .plugin import tapegrad_operations
from .tasks import CTCDigitsTask

__all__ = ["tapegrad_models", "tapegrad_operations"]


@tg.hookimpl
def tapegrad_models() -> list[type[Task]]:
    return [CTCDigitsTask]
