"""``tapegrad train --model ctc-digits``: strings of scikit-learn's handwritten digits read by an LSTM with
CTC (``digits.py``), as a runnable model (a ``tapegrad.tasks.Task``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tapegrad import ParameterLoadError
from tapegrad.parameter import ParameterFile
from tapegrad.tasks import MemoryEstimate, Task, TaskData, number

from .digits import CLASSES, IMAGE, CTCDigits, DigitStrings, digit_strings

MAX_HIDDEN = 100_000  # a 100000-unit LSTM already holds 160 GB of weights
SHORTEST, LONGEST = 3, 5


class CTCDigitsTask(Task):
    """Strings of 3-5 digits: LSTM 128 -> Affine -> CTCLoss, Adam at 3e-3, batches of 32, 8 epochs over
    4000 training strings; character error rate and sequence accuracy on 500 held-out strings."""

    name = "ctc-digits"
    summary = (
        "strings of 3-5 handwritten digits (scikit-learn's) read column by column by an LSTM with CTC, "
        "greedy decoding; character error rate"
    )
    held_out = "test"
    epochs, batch_size, lr, optimizer = 8, 32, 3e-3, "adam"
    eval_batch_size = 250

    @classmethod
    def add_arguments(cls, parser: Any, command: str) -> None:
        parser.add_argument(
            "--hidden", type=number(int, 1, maximum=MAX_HIDDEN), default=128 if command == "train" else None,
            help="LSTM units (" + ("default 128" if command == "train" else "default: read from the file") + ")",
        )
        if command == "train":
            parser.add_argument("--strings", metavar="N", type=number(int, 1, maximum=10**7), default=4000,
                                help="training strings, made from the training images (default 4000)")
        parser.add_argument("--test-strings", metavar="N", type=number(int, 1, maximum=10**7), default=500,
                            help="held-out strings, made from the test images (default 500)")

    def load_data(self) -> TaskData:
        from tapegrad.datasets import load_digits

        seed = self.options.seed
        x_train, x_test, y_train, y_test = load_digits(seed=seed)  # features / 16: back to 0..16 below
        count = getattr(self.options, "strings", 0)  # (tapegrad evaluate makes none)
        # Disjoint images for training and test strings; the test strings do not depend on --strings or --limit,
        # and --limit N keeps the first N of the training strings (cheap to make: all are made).
        train = digit_strings(
            x_train * 16, y_train, count, np.random.default_rng([seed, 0]), shortest=SHORTEST, longest=LONGEST
        )
        test = digit_strings(
            x_test * 16, y_test, self.options.test_strings, np.random.default_rng([seed, 1]),
            shortest=SHORTEST, longest=LONGEST,
        )
        data = TaskData(
            (train.x, train.lengths), train.targets, (test.x, test.lengths), test.targets, info={"test": test}
        )
        return data.limited(getattr(self.options, "limit", None))

    def build_model(self, data: TaskData) -> CTCDigits:
        return CTCDigits(self.options.hidden, seed=self.options.seed, dtype=self.options.dtype)

    def describe(self, model: Any, data: TaskData) -> str:
        return (
            f"LSTM {IMAGE}-{model.hidden_size} + Affine {model.hidden_size}-{CLASSES} "
            f"+ CTC on strings of {SHORTEST}-{LONGEST} digits"
        )

    def final_report(self, model: Any, data: TaskData) -> str | None:
        test: DigitStrings = data.info["test"]
        shown = test.take(slice(0, 5))
        lines = [
            f"read {''.join(map(str, got))!s:>6} for {''.join(map(str, want))}"
            for got, want in zip(model.read(shown), shown.digits)
        ]
        return "the first held-out strings:\n  " + "\n  ".join(lines)

    def memory_estimate(self, data: TaskData) -> MemoryEstimate:
        hidden = self.options.hidden
        weights = [IMAGE * 4 * hidden, hidden * 4 * hidden, hidden * CLASSES]
        # per time step (IMAGE * LONGEST of them, an even count): the LSTM's pre-activations, gates, states
        # and their gradients (about 22 H), the outputs, log-probabilities and CTC's forward-backward tables
        # (about 10 C)
        per_sample = IMAGE * LONGEST * (2 * IMAGE + 22 * hidden + 10 * CLASSES)
        return self.estimate(data, weights, 4 * hidden + CLASSES, per_sample, per_sample // 2)

    def model_for_file(self, source: ParameterFile, data: TaskData) -> Any:
        """The model the file describes: its hidden size read from it (``--hidden`` must agree when given)."""
        recurrent = source.shapes.get("lstm_0.W_hh")
        found = recurrent[0] if recurrent is not None and len(recurrent) == 2 else None
        given = self.options.hidden
        if found is not None and given is not None and found != given:
            raise ParameterLoadError(
                f"{source.label} does not fit these parameters (nothing was loaded): "
                f"--hidden {given} given, the file's is {found}"
            )
        self.options.hidden = given if given is not None else found if found is not None else 1
        return super().model_for_file(source, data)
