"""tapegrad-rnn: recurrent operations (RNNCell, LSTMCell, LSTM) as a tapegrad plugin."""

from .convert import convert_lstm_parameters
from .plugin import LSTM, LSTMCell, RNNCell

__all__ = ["LSTM", "LSTMCell", "RNNCell", "convert_lstm_parameters"]
__version__ = "0.3.0.dev0"  # the one copy: pyproject.toml reads this literal when building
