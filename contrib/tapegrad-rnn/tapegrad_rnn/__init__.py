"""tapegrad-rnn: recurrent operations (RNNCell, LSTMCell, LSTM) as a tapegrad plugin."""

from .plugin import LSTM, LSTMCell, RNNCell

__all__ = ["LSTM", "LSTMCell", "RNNCell"]
__version__ = "0.2.0"  # the one copy: pyproject.toml reads this literal when building
