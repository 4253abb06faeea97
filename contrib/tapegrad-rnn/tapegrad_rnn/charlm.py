"""A character language model: Embedding -> LSTM -> Affine -> SoftmaxLoss, trained by truncated
backpropagation through time on parallel streams of text, as ``torch``'s word_language_model example
batches a corpus.

``CharLSTM`` is the model; ``Vocabulary`` maps characters to ids; ``streams`` cuts a text into the
(N, L) ids every training step reads a window of; ``unigram_perplexity`` is the baseline the model is
measured against (a character-frequency model); ``perplexity`` runs the model over a text in eval mode;
``sample`` draws text from it. The data of the default task is ``corpus.load_text()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad import ArgumentError, InputTypeError, ShapeError
from tapegrad.training import Perplexity


class Vocabulary:
    """The characters of a text, sorted, as ids 0..size-1."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise InputTypeError(f"Vocabulary: expected the text as a str, got {type(text).__name__}")
        self.chars = sorted(set(text))
        if not self.chars:
            raise ArgumentError("Vocabulary: the text is empty")
        self.ids = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int64 ids of ``text``; a character outside the vocabulary raises ArgumentError naming it."""
        try:
            return np.fromiter((self.ids[ch] for ch in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            raise ArgumentError(f"Vocabulary.encode: character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).ravel())

    def __repr__(self) -> str:
        return f"Vocabulary({self.size} characters)"


def split_text(text: str, validation: float = 0.05) -> tuple[str, str]:
    """The text cut once: the first ``1 - validation`` of it for training, the rest for validation."""
    cut = len(text) - round(len(text) * validation)
    return text[:cut], text[cut:]


def streams(ids: np.ndarray, count: int) -> np.ndarray:
    """``ids`` cut into ``count`` consecutive streams of equal length, as rows (the few ids left over
    are dropped): row i continues where row i-1's text stops, so a window of columns is ``count``
    independent pieces of text and the state carried from one window to the next continues each."""
    length = len(ids) // count
    if length < 2:
        raise ShapeError(
            f"streams: {len(ids)} ids cannot make {count} streams of at least 2 (an input and its next character)"
        )
    return ids[: count * length].reshape(count, length)


def windows(data: np.ndarray, steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows of ``steps`` columns over the streams, targets one character ahead;
    the last window is shorter when the columns do not divide evenly."""
    for begin in range(0, data.shape[1] - 1, steps):
        end = min(begin + steps, data.shape[1] - 1)
        yield data[:, begin:end], data[:, begin + 1 : end + 1]


def samples(ids: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` cut into consecutive windows of ``steps`` characters, as independent samples:
    (inputs (n, steps), targets (n, steps)), each target the character after its input (the few
    ids left over are dropped). What ``tapegrad.Trainer`` trains on: it shuffles samples, so each
    window starts from a zero state."""
    count = (len(ids) - 1) // steps
    if count < 1:
        raise ShapeError(f"samples: {len(ids)} ids cannot make one window of {steps} characters and the one after it")
    used = count * steps
    return ids[:used].reshape(count, steps), ids[1 : used + 1].reshape(count, steps)


def unigram_perplexity(train_ids: np.ndarray, ids: np.ndarray, vocab_size: int) -> float:
    """The perplexity on ``ids`` of the character-frequency model of ``train_ids`` (add-one smoothed,
    so that a character never seen in training has a probability above 0)."""
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    log_p = np.log(counts / counts.sum())
    return math.exp(-float(log_p[ids].mean()))


class CharLSTM:
    """Embedding (vocab, embed) -> LSTM (embed, hidden) -> Affine (hidden, vocab) -> SoftmaxLoss.

    ``forward(ids, h0, c0)`` takes ids (N, T) and the states (N, hidden) the previous window ended
    with (zeros when absent), and returns (probabilities (N, T, vocab), h_T, c_T) as Variables;
    ``loss(targets)`` is the mean cross-entropy (natural log) of the last forward against the next
    characters (N, T). For ``tapegrad.Trainer`` it names its metric (``Perplexity``) and its
    ``output_size`` (the vocabulary: labels are checked against it).
    """

    metric = Perplexity()

    def __init__(
        self,
        vocab_size: int,
        embed_size: int = 32,
        hidden_size: int = 256,
        *,
        seed: int | None = None,
        dtype: Any = np.float64,
    ) -> None:
        self.vocab_size, self.embed_size, self.hidden_size = vocab_size, embed_size, hidden_size
        self.output_size = vocab_size
        self.graph = tg.Graph("CharLSTM", seed=seed, dtype=dtype)
        # Qualified names: another plugin offering one of these names must not change this model.
        self.embedding = self.graph.get_operation("layers:Embedding", [vocab_size, embed_size])
        self.lstm = self.graph.get_operation("rnn:LSTM", [embed_size, hidden_size], return_state=True)
        self.out = self.graph.get_operation("layers:Affine", [hidden_size, vocab_size])
        self.softmax_loss = self.graph.get_operation("losses:SoftmaxLoss")

    def initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zeros for h0 and c0, in the graph's dtype."""
        zeros = np.zeros((batch, self.hidden_size), dtype=self.graph.dtype)
        return zeros, zeros.copy()

    def forward(self, ids: Any, h0: Any = None, c0: Any = None) -> tuple[tg.Variable, tg.Variable, tg.Variable]:
        states = () if h0 is None and c0 is None else (h0, c0)
        hidden, h_T, c_T = self.lstm(self.embedding(ids), *states)
        return self.softmax_loss(self.out(hidden)), h_T, c_T

    def loss(self, targets: Any) -> float:
        return self.softmax_loss.loss(targets)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"CharLSTM(vocab={self.vocab_size}, embed={self.embed_size}, hidden={self.hidden_size})"


def perplexity(model: CharLSTM, data: np.ndarray, steps: int = 128) -> float:
    """exp of the mean cross-entropy per character of ``model`` over the streams ``data`` (N, L),
    read window by window in eval mode with the state carried on."""
    graph = model.graph
    was_training = graph.train_state
    graph.eval()
    try:
        h, c = model.initial_state(data.shape[0])
        total, count = 0.0, 0
        for inputs, targets in windows(data, steps):
            _, h_T, c_T = model.forward(inputs, h, c)
            total += model.loss(targets) * targets.size
            count += targets.size
            h, c = h_T.value, c_T.value
    finally:
        graph.train_state = was_training
    return math.exp(total / count)


def sample(
    model: CharLSTM, vocabulary: Vocabulary, prime: str, length: int, *, temperature: float = 0.8, seed: int | None = 0
) -> str:
    """``prime`` followed by ``length`` characters drawn one at a time from the model's distribution
    (probabilities raised to 1/temperature, renormalised), in eval mode."""
    if not prime:
        raise ArgumentError("sample: prime must hold at least one character (the first input)")
    temperature = tg.check_number("sample", "temperature", temperature, low=0.0)
    if temperature == 0:
        raise ArgumentError("sample: temperature must be above 0")
    rng = np.random.default_rng(seed)
    graph = model.graph
    was_training = graph.train_state
    graph.eval()
    try:
        h, c = model.initial_state(1)
        ids = vocabulary.encode(prime)[None, :]
        drawn = []
        for _ in range(length):
            probs, h_T, c_T = model.forward(ids, h, c)
            h, c = h_T.value, c_T.value
            logp = np.log(np.maximum(probs.value[0, -1].astype(np.float64), 1e-300)) / temperature
            p = np.exp(logp - logp.max())
            drawn.append(int(rng.choice(len(p), p=p / p.sum())))
            ids = np.array([[drawn[-1]]])
    finally:
        graph.train_state = was_training
    return prime + vocabulary.decode(drawn)
