"""Parameter files of the LSTM family saved by tapegrad-rnn 0.2 and earlier, converted.

Those files hold, per LSTM or LSTMCell op, ``<op>.W`` (D, 4H), ``<op>.U`` (H, 4H) and ``<op>.b``
(4H,) with the gates ordered (i, f, o, g). Today's ops name them ``W_ih``, ``W_hh`` and ``b``, gates
(i, f, g, o) as PyTorch orders them, so ``Parameter.load`` refuses an old file (naming the
missing and unexpected parameters) instead of loading its gates into the wrong places.
"""

from __future__ import annotations

import os

import numpy as np

from tapegrad import ParameterLoadError, Variable
from tapegrad.parameter import Parameter, read_parameter_file

__all__ = ["convert_lstm_parameters"]


def _reorder_gates(array: np.ndarray, hidden: int) -> np.ndarray:
    """The last axis's four blocks (i, f, o, g) of ``hidden`` columns each, as (i, f, g, o)."""
    i, f, o, g = (array[..., k * hidden : (k + 1) * hidden] for k in range(4))
    return np.concatenate([i, f, g, o], axis=-1)


def convert_lstm_parameters(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> list[str]:
    """Write ``destination``: the parameter file ``source`` (saved by tapegrad-rnn 0.2 or earlier)
    with every LSTM's and LSTMCell's parameters in today's layout; return those ops' names.

    An op of the old layout is recognised by ``<op>.W``, ``<op>.U`` and ``<op>.b`` with U of shape
    (H, 4H) (an RNNCell's U is (H, H), and stays as it is); its gate columns are reordered from
    (i, f, o, g) to (i, f, g, o) and W, U renamed W_ih, W_hh. Every other value is copied as it is.
    A file with no such op raises ``ParameterLoadError`` (it is already in today's layout, or holds
    no LSTM); so does one ``Parameter.load`` would refuse.
    """
    path, values = read_parameter_file(source)
    converted = []
    for name in list(values):
        if not name.endswith(".U"):
            continue
        op = name[: -len(".U")]
        W, U, b = values.get(f"{op}.W"), values[name], values.get(f"{op}.b")
        hidden = U.shape[0] if U.ndim == 2 else 0
        if W is None or b is None or not hidden or U.shape != (hidden, 4 * hidden):
            continue  # an RNNCell (U is (H, H)), or not a recurrent op at all
        if W.ndim != 2 or W.shape[1] != 4 * hidden or b.shape != (4 * hidden,):
            raise ParameterLoadError(
                f"parameter file {str(path)!r}: {op}.W {W.shape}, {op}.U {U.shape} and {op}.b {b.shape} do not "
                f"form an LSTM of hidden size {hidden} (W must be (D, {4 * hidden}) and b ({4 * hidden},))"
            )
        del values[f"{op}.W"], values[name]
        values[f"{op}.W_ih"] = _reorder_gates(W, hidden)
        values[f"{op}.W_hh"] = _reorder_gates(U, hidden)
        values[f"{op}.b"] = _reorder_gates(b, hidden)
        converted.append(op)
    if not converted:
        raise ParameterLoadError(
            f"parameter file {str(path)!r} holds no LSTM or LSTMCell parameters in the old layout "
            "(<op>.W, <op>.U of shape (H, 4H), <op>.b): nothing to convert"
        )
    store = Parameter()
    for name, value in values.items():  # values and dtypes as they are
        store.variable_dict[name] = Variable(value, name=name)
    store.save(destination)
    return converted
