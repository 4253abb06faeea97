"""The sequence models' training steps against PyTorch with the same sizes, and captured against eager.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_sequence.py [--runs 3] [--models char-lstm ctc-digits]

Every contender trains its own copy of the model from the same starting weights on the same batches,
in chunks of a few steps interleaved with the others' (``_timing.compare``); the figure is the median
of the per-chunk ratios against PyTorch's step, as a range over the runs.

- char-lstm (tapegrad-rnn's defaults: 96 characters, embedding 32, LSTM 256, batch 32, windows of
  64 characters, the state carried from window to window): Embedding -> LSTM -> Affine ->
  SoftmaxLoss, Adam and clipping at norm 5; PyTorch: ``nn.Embedding`` -> ``nn.LSTM(batch_first=True)``
  -> ``nn.Linear`` -> ``cross_entropy``, ``clip_grad_norm_``, ``torch.optim.Adam``.
- ctc-digits (tapegrad-ctc's defaults: strings of 3-5 digits padded to 40 columns of 8 pixels,
  LSTM 128, batch 32): LSTM -> Affine -> CTCLoss with input lengths, Adam and clipping at norm 5;
  PyTorch: ``nn.LSTM`` -> ``nn.Linear`` -> ``log_softmax`` -> ``ctc_loss`` (reduction "mean").

PyTorch runs with as many threads as BLAS is given (``torch.set_num_threads``), in the same dtype.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from _timing import blas_threads, compare, report_runs

from tapegrad.optim import Adam, clip_grad_norm

CLIP, STEPS = 5.0, 2  # steps per call of a contender


def load_torch(module: Any, lstm: Any, out: Any, embedding: Any = None) -> None:
    """Copy tapegrad's weights into PyTorch's modules (the LSTM's as tapegrad-rnn's README says)."""
    with torch.no_grad():
        module.lstm.weight_ih_l0.copy_(torch.from_numpy(lstm.W_ih.value.T))
        module.lstm.weight_hh_l0.copy_(torch.from_numpy(lstm.W_hh.value.T))
        module.lstm.bias_ih_l0.copy_(torch.from_numpy(lstm.b.value))
        module.lstm.bias_hh_l0.zero_()
        module.out.weight.copy_(torch.from_numpy(out.W.value.T))
        module.out.bias.copy_(torch.from_numpy(out.b.value))
        if embedding is not None:
            module.embedding.weight.copy_(torch.from_numpy(embedding.W.value))


# -- char-lstm ------------------------------------------------------------------------------------


def char_lstm_contenders(dtype: str) -> dict[str, Callable[[], object]]:
    from tapegrad_rnn.charlm import CharLSTM, Vocabulary, streams, windows
    from tapegrad_rnn.corpus import load_text

    text = load_text()
    vocabulary = Vocabulary(text)
    data = streams(vocabulary.encode(text), 32)
    batches = [pair for pair in windows(data, 64) if pair[0].shape[1] == 64]

    def cycle() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield from batches

    def tapegrad_contender(captured: bool) -> Callable[[], object]:
        model = CharLSTM(vocabulary.size, seed=0, dtype=dtype)
        optimizer = Adam(model.graph.parameter, lr=2e-3)

        def step(ids: np.ndarray, targets: np.ndarray, h: np.ndarray, c: np.ndarray) -> Any:
            _, h_T, c_T = model.forward(ids, h, c)
            value = model.loss(targets)
            model.graph.backward()
            clip_grad_norm(optimizer.variables, CLIP)
            optimizer.step()
            optimizer.zero_grad()
            return value, h_T, c_T

        run = model.graph.capture(step) if captured else step
        source = cycle()
        state = list(model.initial_state(32))

        def chunk() -> None:
            for _ in range(STEPS):
                ids, targets = next(source)
                _, h_T, c_T = run(ids, targets, *state)
                state[:] = h_T.value, c_T.value

        return chunk

    def torch_contender() -> Callable[[], object]:
        reference = CharLSTM(vocabulary.size, seed=0, dtype=dtype)  # the same starting weights
        module = torch.nn.Module()
        module.embedding = torch.nn.Embedding(vocabulary.size, 32)
        module.lstm = torch.nn.LSTM(32, 256, batch_first=True)
        module.out = torch.nn.Linear(256, vocabulary.size)
        module.to(getattr(torch, dtype))
        load_torch(module, reference.lstm, reference.out, reference.embedding)
        optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
        source = cycle()
        state: list[Any] = [None]

        def chunk() -> None:
            for _ in range(STEPS):
                ids, targets = (torch.from_numpy(a) for a in next(source))
                hidden, (h, c) = module.lstm(module.embedding(ids), state[0])
                loss = torch.nn.functional.cross_entropy(
                    module.out(hidden).reshape(-1, vocabulary.size), targets.reshape(-1)
                )
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
                optimizer.step()
                state[0] = (h.detach(), c.detach())

        return chunk

    return {
        "PyTorch nn.LSTM": torch_contender(),
        "tapegrad captured": tapegrad_contender(True),
        "tapegrad eager": tapegrad_contender(False),
    }


# -- ctc-digits -----------------------------------------------------------------------------------


def ctc_digits_contenders(dtype: str) -> dict[str, Callable[[], object]]:
    from tapegrad_ctc.digits import CLASSES, CTCDigits, digit_strings

    from tapegrad.datasets import load_digits

    x_train, _, y_train, _ = load_digits(seed=0)
    data = digit_strings(x_train * 16, y_train, 32 * 16, np.random.default_rng(0))
    batches = [data.take(slice(begin, begin + 32)) for begin in range(0, len(data), 32)]
    batches = [(b.x.astype(dtype), b.lengths, b.targets) for b in batches]

    def cycle() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        while True:
            yield from batches

    def tapegrad_contender(captured: bool) -> Callable[[], object]:
        model = CTCDigits(seed=0, dtype=dtype)
        optimizer = Adam(model.graph.parameter, lr=3e-3)

        def step(x: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> float:
            model.forward(x, lengths)
            value = model.loss(targets)
            model.graph.backward()
            clip_grad_norm(optimizer.variables, CLIP)
            optimizer.step()
            optimizer.zero_grad()
            return value

        run = model.graph.capture(step) if captured else step
        source = cycle()

        def chunk() -> None:
            for _ in range(STEPS):
                run(*next(source))

        return chunk

    def torch_contender() -> Callable[[], object]:
        reference = CTCDigits(seed=0, dtype=dtype)
        module = torch.nn.Module()
        module.lstm = torch.nn.LSTM(8, reference.hidden_size, batch_first=True)
        module.out = torch.nn.Linear(reference.hidden_size, CLASSES)
        module.to(getattr(torch, dtype))
        load_torch(module, reference.lstm, reference.out)
        optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
        source = cycle()

        def chunk() -> None:
            for _ in range(STEPS):
                x, lengths, targets = next(source)
                target_lengths = (targets >= 0).sum(axis=1)
                hidden, _ = module.lstm(torch.from_numpy(x))
                log_probs = torch.log_softmax(module.out(hidden), dim=-1).transpose(0, 1)  # (T, N, C)
                loss = torch.nn.functional.ctc_loss(
                    log_probs,
                    torch.from_numpy(np.maximum(targets, 0)),
                    torch.from_numpy(lengths),
                    torch.from_numpy(target_lengths),
                )
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
                optimizer.step()

        return chunk

    return {
        "PyTorch nn.LSTM": torch_contender(),
        "tapegrad captured": tapegrad_contender(True),
        "tapegrad eager": tapegrad_contender(False),
    }


MODELS = {"char-lstm": char_lstm_contenders, "ctc-digits": ctc_digits_contenders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements, for the range of the medians")
    parser.add_argument("--chunks", type=int, default=15, help="timed chunks per contender and run")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    print(
        f"BLAS threads: {blas_threads()}; PyTorch {torch.__version__} threads: {torch.get_num_threads()}; {args.dtype}"
    )
    for name in args.models:
        runs = [
            compare(MODELS[name](args.dtype), "PyTorch nn.LSTM", chunks=args.chunks, chunk_seconds=0.5)
            for _ in range(args.runs)
        ]
        report_runs(f"{name}: per training step", runs, per=STEPS)


if __name__ == "__main__":
    main()
