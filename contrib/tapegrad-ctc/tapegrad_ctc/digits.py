"""Handwritten digit strings read by an LSTM with CTC: scikit-learn's 8x8 digits set side by side,
3 to 5 to a string, read column by column (one 8-pixel column a time step), an LSTM, an Affine layer
to the 11 classes (the blank, 0, and the digits 0-9 as 1-10), CTCLoss, and greedy decoding.

``digit_strings`` makes the strings, ``CTCDigits`` is the model, ``error_rates`` scores decoded
strings (character error rate: edit distance over the reference length, and sequence accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad import ArgumentError, ShapeError
from tapegrad.training import Metric

from .decode import greedy_decode

BLANK = 0
CLASSES = 11  # the blank and the ten digits, digit d being class d + 1
IMAGE = 8  # scikit-learn's digits are 8x8, values 0..16


@dataclass(frozen=True)
class DigitStrings:
    """A batch of digit strings: ``x`` (N, T, 8) columns, scaled to [0, 1] and padded with zeros to
    T = 8 x the longest string; ``lengths`` (N,) each string's columns; ``targets`` (N, S) its
    classes (digit + 1) padded with -1; ``digits`` the strings as lists of digits."""

    x: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray

    @property
    def digits(self) -> list[list[int]]:
        return _digits(self.targets)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: Any) -> DigitStrings:
        return DigitStrings(self.x[index], self.lengths[index], self.targets[index])


def _digits(targets: np.ndarray) -> list[list[int]]:
    """Padded targets (classes: digit + 1, padding -1) as the strings' digits."""
    return [[int(c) - 1 for c in row if c >= 0] for row in targets]


def digit_strings(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator, *, shortest: int = 3, longest: int = 5
) -> DigitStrings:
    """``count`` strings of ``shortest``..``longest`` digits drawn (with replacement) from ``images``
    (n, 64) or (n, 8, 8) with values 0..16 and their ``labels`` (n,), each length equally likely.
    Image i's columns become time steps 8i..8i+7 of its string, so a string of k digits is 8k steps."""
    images = np.asarray(images, dtype=np.float64).reshape(-1, IMAGE, IMAGE)
    labels = np.asarray(labels)
    if len(images) != len(labels) or not len(images):
        raise ShapeError(
            f"digit_strings: expected as many labels as images (at least one), got {len(images)} and {len(labels)}"
        )
    if not 1 <= shortest <= longest:
        raise ArgumentError(f"digit_strings: expected 1 <= shortest <= longest, got {shortest} and {longest}")
    sizes = rng.integers(shortest, longest + 1, size=count)
    x = np.zeros((count, IMAGE * longest, IMAGE))
    targets = np.full((count, longest), -1, dtype=np.int64)
    for row, size in enumerate(sizes):
        picked = rng.integers(0, len(images), size=size)
        # (k, 8 rows, 8 columns) -> columns in reading order, each its 8 pixels top to bottom
        x[row, : IMAGE * size] = images[picked].transpose(0, 2, 1).reshape(IMAGE * size, IMAGE) / 16.0
        targets[row, :size] = labels[picked] + 1
    return DigitStrings(x, (IMAGE * sizes).astype(np.int64), targets)


class CharacterErrorRate(Metric):
    """The character error rate of greedy decoding (edit distance over the reference length), and the
    sequence accuracy beside it, from CTC outputs (N, T, C), the input lengths (the inputs' second
    array) and targets padded with -1 (classes: the digit + 1)."""

    name, higher_is_better = "character error rate", False

    def __call__(
        self, outputs: Any, targets: np.ndarray, *, inputs: tuple[np.ndarray, ...], loss: float | None
    ) -> dict[str, float]:
        decoded = CTCDigits.decode(outputs, inputs[1])
        references = _digits(targets)
        cer, accuracy = error_rates(decoded, references)
        return {"character error rate": cer, "sequence accuracy": accuracy}


class CTCDigits:
    """LSTM (8, hidden) -> Affine (hidden, 11) -> CTCLoss (blank 0).

    ``forward(x, lengths)`` takes columns (N, T, 8) and each string's length (N,) and returns the
    log-probabilities (N, T, 11); ``loss(targets)`` is CTC's mean loss against classes padded with -1;
    ``decode(log_probs, lengths)`` gives the digits read, greedily. For ``tapegrad.Trainer`` it names
    its metric (``CharacterErrorRate``) and leaves its labels to CTCLoss (``task = "ctc"``).
    """

    task = "ctc"
    metric = CharacterErrorRate()

    def __init__(self, hidden_size: int = 128, *, seed: int | None = None, dtype: Any = np.float64) -> None:
        self.hidden_size = hidden_size
        self.graph = tg.Graph("CTCDigits", seed=seed, dtype=dtype)
        # Qualified names: another plugin offering one of these names must not change this model.
        self.lstm = self.graph.get_operation("rnn:LSTM", [IMAGE, hidden_size])
        self.out = self.graph.get_operation("layers:Affine", [hidden_size, CLASSES])
        self.ctc = self.graph.get_operation("ctc:CTCLoss", blank=BLANK)

    def forward(self, x: Any, lengths: Any) -> tg.Variable:
        return self.ctc(self.out(self.lstm(x)), lengths)  # type: ignore[no-any-return]

    def loss(self, targets: Any) -> float:
        return self.ctc.loss(targets)  # type: ignore[no-any-return]

    @staticmethod
    def decode(log_probs: Any, lengths: Any) -> list[list[int]]:
        """The digits read from each string (classes back to digits)."""
        return [[c - 1 for c in row] for row in greedy_decode(log_probs, lengths, blank=BLANK)]

    def read(self, data: DigitStrings, batch_size: int = 256) -> list[list[int]]:
        """The digits the model reads from every string of ``data``, in eval mode."""
        graph = self.graph
        was_training = graph.train_state
        graph.eval()
        try:
            decoded: list[list[int]] = []
            for begin in range(0, len(data), batch_size):
                part = data.take(slice(begin, begin + batch_size))
                decoded += self.decode(self.forward(part.x, part.lengths), part.lengths)
        finally:
            graph.train_state = was_training
        return decoded

    def __repr__(self) -> str:
        return f"CTCDigits(hidden={self.hidden_size})"


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_rates(decoded: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(character error rate, sequence accuracy): the edit distances summed over the reference
    lengths summed, and the share of strings read exactly."""
    if len(decoded) != len(references) or not references:
        raise ShapeError(
            "error_rates: expected as many decoded strings as references (at least one), "
            f"got {len(decoded)} and {len(references)}"
        )
    total = sum(len(r) for r in references)
    if not total:
        raise ShapeError("error_rates: the references are all empty: no character to count errors against")
    errors = sum(edit_distance(d, r) for d, r in zip(decoded, references))
    exact = sum(list(d) == list(r) for d, r in zip(decoded, references))
    return errors / total, exact / len(references)
