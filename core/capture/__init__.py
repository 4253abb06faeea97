"""Captured steps: ``graph.capture(fn)`` checks a training step once, then replays it at numpy speed.

The first call of a captured step for a *signature* (``signature.py``) runs ``fn`` eagerly while a
``Recording`` watches and guards it (``recording.py``); the record becomes a Python program that does
the same op calls again (``program.py``); the second call runs that program on a copy of the world
and ``fn`` eagerly on the live one, and compares them (``check.py``); later calls replay the program
(``step.py``: ``CapturedStep``, its cache of records).

Why a replay equals the eager run, bit for bit. A replay calls each op's own ``forward``, ``loss`` and
``backward``, and each replayable call (optimizers, clipping, schedulers, ``clear_grads``,
``graph.train``/``eval``), in the recorded order, on the recorded sources, reading parameters,
hyperparameters and generators live; gradients are summed by the same rule (``variable.add_to``) in
the same order. So it computes what the eager run computes, provided ``fn`` on a later call would make
the same calls on the same sources. The step's own Python could break that in four ways, each refused
while recording, naming the file and line and the fix:

1. reading a value tapegrad holds or computes (a Variable's value or gradient, a loss value in
   arithmetic, a comparison or a truth test): whatever Python computes from it is frozen;
2. computing with an argument's values (``x / 16``, ``x[0, 10] > 0.3``): likewise frozen;
3. feeding an op an array the record would freeze: everything an op receives is an argument, an op
   output, a Variable living outside the step, a ``tg.constant``, or a Python number (kept by value);
4. writing tapegrad state (a Variable, an attribute of an op, optimizer, scheduler or graph): a replay
   would not write it.

A refused first call still completes eagerly (nothing is half-applied) and raises ``CaptureError``
carrying its result (``eager_result``). What no guard sees (a branch on a counter in a closure or a
global, ``math.log(loss)``, an op attribute changed in place) is caught by the first replay's check
when it differs by the second call; Python state that changes after that is the caller's
responsibility, as with CUDA graphs and TinyJit.
"""

from __future__ import annotations

from .recording import GuardedVariable, TracedArray, TracedFloat
from .step import CapturedStep, Record

__all__ = ["CapturedStep", "GuardedVariable", "Record", "TracedArray", "TracedFloat"]
