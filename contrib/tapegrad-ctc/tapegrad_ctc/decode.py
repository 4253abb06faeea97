"""Greedy (best-path) CTC decoding."""

from __future__ import annotations

from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad import InputTypeError, NonFiniteError, ShapeError

from .plugin import check_input_lengths

WHERE = "greedy_decode"


def greedy_decode(scores: Any, input_lengths: Any = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of CTC outputs: per sequence, the most likely class at each of its
    steps, repeats collapsed, blanks dropped (``[1, 1, 0, 1, 2, 2]`` with blank 0 is ``[1, 1, 2]``).

    ``scores`` (N, T, C) are log-probabilities or logits (the argmax is the same), as an array or
    a Variable (``CTCLoss.forward``'s output); ``input_lengths`` (N,) limits sequence i to its first
    ``input_lengths[i]`` steps (default: all T). Returns one list of class ids per sequence. Ties
    go to the lowest class, as ``argmax`` does. Bad input raises an error of ``tapegrad.errors``
    naming greedy_decode: NaN in the steps used is NonFiniteError.
    """
    array = scores.value if isinstance(scores, tg.Variable) else np.asarray(scores)
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"{WHERE}: expected real-valued scores, got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] == 0:
        raise ShapeError(f"{WHERE}: expected scores of shape (N, T, C) with C >= 1, got {array.shape}")
    n, steps, classes = array.shape
    blank = int(tg.check_number(WHERE, "blank", blank, low=0, integer=True))
    if blank >= classes:
        raise ShapeError(f"{WHERE}: blank {blank} is not a class of scores with C={classes}")
    if input_lengths is None:
        lengths = np.full(n, steps)
    else:
        given = input_lengths.value if isinstance(input_lengths, tg.Variable) else np.asarray(input_lengths)
        lengths = check_input_lengths(WHERE, given, n, steps)
    used = np.arange(steps)[None, :] < lengths[:, None]
    if array.dtype.kind == "f" and np.isnan(array[used]).any():
        row, step = (int(i[0]) for i in np.nonzero(np.isnan(array).any(axis=2) & used))
        raise NonFiniteError(f"{WHERE}: the scores of sequence {row} hold NaN at step {step}")
    best = array.argmax(axis=2)
    decoded = []
    for path, length in zip(best, lengths):
        path = path[:length]
        if path.size:
            path = path[np.concatenate(([True], path[1:] != path[:-1]))]  # repeats collapsed
        decoded.append([int(c) for c in path if c != blank])
    return decoded
