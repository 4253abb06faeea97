"""The plugin the entry point ``rnn`` names: the recurrent ops (``plugin.py``) and the ``char-lstm``
runnable model (``tasks.py``), so that blocking the plugin (``TAPEGRAD_DISABLE_PLUGINS=rnn``) blocks the
model with the ops it needs."""

from __future__ import annotations

import tapegrad as tg
from tapegrad.tasks import Task

from .plugin import tapegrad_operations
from .tasks import CharLSTMTask

__all__ = ["tapegrad_models", "tapegrad_operations"]


@tg.hookimpl
def tapegrad_models() -> list[type[Task]]:
    return [CharLSTMTask]
