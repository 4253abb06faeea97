"""``tapegrad train --model char-lstm``: the character language model of ``charlm.py`` as a runnable
model (a ``tapegrad.tasks.Task``), on the pack's corpus of Python docstrings or the text of ``--text FILE``.

The Trainer shuffles samples, so each sample is a window of ``--window`` characters read from a zero
state (``charlm.samples``); the held-out windows are the last 5% of the text. Stateful training over
streams (truncated backpropagation through time with the state carried on) is ``charlm``'s Python API.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tapegrad import ParameterLoadError, TrainingError
from tapegrad.parameter import ParameterFile
from tapegrad.tasks import MemoryEstimate, Task, TaskData, number

from . import corpus
from .charlm import CharLSTM, Vocabulary, sample, samples, split_text, unigram_perplexity

MAX_SIZE = 100_000  # hidden or embedding units; a 100000-unit LSTM already holds 160 GB of weights


class CharLSTMTask(Task):
    """A character language model: Embedding -> LSTM -> Affine -> SoftmaxLoss, Adam at 2e-3, batches of
    32 windows of 64 characters, 3 epochs; validation perplexity per epoch against a character-frequency
    model's, a sampled text at the end."""

    name = "char-lstm"
    summary = (
        "a character language model (Embedding -> LSTM -> Affine -> SoftmaxLoss) on Python's docstrings "
        "(or --text FILE); validation perplexity, a sampled text"
    )
    held_out = "validation"
    epochs, batch_size, lr, optimizer = 3, 32, 2e-3, "adam"
    eval_batch_size = 256

    @classmethod
    def add_arguments(cls, parser: Any, command: str) -> None:
        parser.add_argument(
            "--text", metavar="FILE",
            help="train on this UTF-8 text instead of the pack's corpus (the ASCII docstrings of Python's standard "
            "library; see tapegrad-rnn's README); its last 5%% is the validation text"
            + ("; evaluate needs the file the parameters were trained on (it makes the vocabulary)"
               if command == "evaluate" else ""),
        )
        sizes = "default 256" if command == "train" else "default: read from the file"
        parser.add_argument("--hidden", type=number(int, 1, maximum=MAX_SIZE),
                            default=256 if command == "train" else None, help=f"LSTM units ({sizes})")
        parser.add_argument("--embed", type=number(int, 1, maximum=MAX_SIZE),
                            default=32 if command == "train" else None,
                            help="embedding size "
                            f"({'default 32' if command == 'train' else 'default: read from the file'})")
        parser.add_argument("--window", type=number(int, 1, maximum=10**6), default=64,
                            help="characters per training sample, each read from a zero state (default 64)")
        parser.add_argument("--sample", metavar="N", type=number(int, 0, maximum=10**6), default=300,
                            help="characters to sample at the end (default 300; 0: none)")
        parser.add_argument("--temperature", type=number(float, 0.0, inclusive=False), default=0.8,
                            help="sampling temperature: below 1 sharper, above 1 flatter (default 0.8)")
        parser.add_argument("--prime", default="Return the",
                            help="the text sampling starts from (default 'Return the')")

    # -- data -----------------------------------------------------------------------------------------
    def _text(self) -> tuple[str, str]:
        """The text and where it comes from."""
        path = self.options.text
        if path is None:
            return corpus.load_text(), "Python's docstrings"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TrainingError(
                f"char-lstm: --text {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        except OSError as exc:
            raise TrainingError(f"char-lstm: cannot read --text {path!r}: {exc.strerror or exc}") from None
        return text, Path(path).name

    def load_data(self) -> TaskData:
        text, source = self._text()
        window = self.options.window
        train, valid = split_text(text)
        if len(valid) < window + 1 or len(train) < window + 1:
            raise TrainingError(
                f"char-lstm: the text ({source}, {len(text)} characters) is too short for windows of {window} "
                f"characters: its last 5% ({len(valid)} characters), the validation text, needs at least {window + 1}; "
                "give a longer text or a smaller --window"
            )
        vocabulary = Vocabulary(text)
        train_ids, valid_ids = vocabulary.encode(train), vocabulary.encode(valid)
        x_train, y_train = samples(train_ids, window)
        x_valid, y_valid = samples(valid_ids, window)
        limit = getattr(self.options, "limit", None)
        data = TaskData(x_train, y_train, x_valid, y_valid).limited(limit)
        # the baseline: a character-frequency model of the characters trained on, on the validation targets
        trained_on = data.x_train.ravel() if limit is not None else train_ids
        self.unigram = unigram_perplexity(trained_on, y_valid.ravel(), vocabulary.size)
        data.info.update(vocabulary=vocabulary, source=source, unigram_perplexity=self.unigram)
        return data

    # -- the model ------------------------------------------------------------------------------------
    def build_model(self, data: TaskData) -> CharLSTM:
        vocabulary = data.info["vocabulary"]
        return CharLSTM(
            vocabulary.size, self.options.embed, self.options.hidden, seed=self.options.seed, dtype=self.options.dtype
        )

    def describe(self, model: Any, data: TaskData) -> str:
        return (
            f"CharLSTM (vocabulary {model.vocab_size}, embedding {model.embed_size}, LSTM {model.hidden_size}) on "
            f"{data.info['source']}, windows of {self.options.window} characters"
        )

    def epoch_report(self, model: Any, record: Any) -> str | None:
        value = record.metrics.get("perplexity")
        return None if value is None else f"  {value / self.unigram:.3f}x the perplexity of a character-frequency model"

    def final_report(self, model: Any, data: TaskData) -> str | None:
        lines = [
            f"character-frequency (unigram) model: {self.held_out} perplexity {data.info['unigram_perplexity']:.4f}"
        ]
        if self.options.sample:
            text = sample(model, data.info["vocabulary"], self._prime(data), self.options.sample,
                          temperature=self.options.temperature, seed=self.options.seed)
            lines.append(f"sampled text (temperature {self.options.temperature:g}, seed {self.options.seed}):\n{text}")
        return "\n".join(lines)

    def _prime(self, data: TaskData) -> str:
        vocabulary = data.info["vocabulary"]
        prime = "".join(ch for ch in self.options.prime if ch in vocabulary.ids)
        return prime or vocabulary.chars[0]

    def memory_estimate(self, data: TaskData) -> MemoryEstimate:
        vocab = data.info["vocabulary"].size
        embed, hidden, window = self.options.embed, self.options.hidden, self.options.window
        weights = [vocab * embed, embed * 4 * hidden, hidden * 4 * hidden, hidden * vocab]
        # per character: the embedding, the LSTM's pre-activations, gates, states and their gradients
        # (about 22 H), the logits, probabilities and their gradients (about 5 V)
        per_position = 3 * embed + 22 * hidden + 5 * vocab
        return self.estimate(data, weights, 4 * hidden + vocab, window * per_position, window * (per_position // 2))

    def model_for_file(self, source: ParameterFile, data: TaskData) -> Any:
        """The CharLSTM the file describes: embedding and hidden sizes read from it (``--embed``/``--hidden``
        must agree when given), its vocabulary that of the text (a file trained on another text with
        another number of characters is refused, naming the shapes)."""
        embedding = source.shapes.get("embedding_0.W")
        recurrent = source.shapes.get("lstm_0.W_hh")
        for option, found in (("embed", embedding[1] if embedding and len(embedding) == 2 else None),
                              ("hidden", recurrent[0] if recurrent and len(recurrent) == 2 else None)):
            given = getattr(self.options, option)
            if found is not None and given is not None and found != given:
                raise ParameterLoadError(
                    f"{source.label} does not fit these parameters (nothing was loaded): --{option} {given} given, "
                    f"the file's is {found}"
                )
            setattr(self.options, option, given if given is not None else found if found is not None else 1)
        vocab = data.info["vocabulary"].size
        if embedding is not None and len(embedding) == 2 and embedding[0] != vocab:
            raise ParameterLoadError(
                f"{source.label} was trained on a text of {embedding[0]} distinct characters, but "
                f"{data.info['source']} has {vocab} (nothing was loaded): pass the text it was trained on with --text"
            )
        return super().model_for_file(source, data)

    unigram = math.nan  # the character-frequency model's validation perplexity, once load_data has run

