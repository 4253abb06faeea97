"""Every error tapegrad raises on purpose, in one place.

Each is a subclass of ``TapegradError`` and of the builtin a caller would expect
(``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working. The contract suite's
two (``ContractError``, ``ContractSkip``) are the types test runners understand instead: an
``AssertionError`` and a ``unittest.SkipTest``. Warnings are ``UserWarning``s.
"""

from __future__ import annotations

import unittest

__all__ = [
    "TapegradError",
    "ShapeError",
    "InputTypeError",
    "OperationError",
    "UnknownOperationError",
    "AmbiguousOperationError",
    "RegistrationError",
    "BackwardError",
    "ParameterLoadError",
    "GraphError",
    "CaptureError",
    "ArgumentError",
    "OutOfRangeError",
    "MissingDependencyError",
    "TapeWarning",
    "CaptureWarning",
    "NonFiniteError",
    "TrainingError",
    "ScaffoldError",
    "PluginWarning",
    "PluginUnavailableError",
    "ContractError",
    "ContractSkip",
    "FLOAT_SIGNALS",
]

#: What numpy raises for a floating-point signal (overflow, invalid) when its caller asked for that:
#: ``np.errstate(over="raise")`` raises FloatingPointError (the Trainer trains so), and a warnings filter
#: turns numpy's RuntimeWarning into an exception (pytest configured so). An op that can compute a
#: representable result another way catches these and does; tapegrad re-raises the others as
#: ``NonFiniteError`` naming the op (``BackwardError`` in backward).
FLOAT_SIGNALS = (FloatingPointError, RuntimeWarning)


class TapegradError(Exception):
    """Base class of every error tapegrad raises on purpose."""


class OperationError(TapegradError, ValueError):
    """An operation received a value it cannot work with (wrong range, NaN, bad argument)."""


class ShapeError(OperationError):
    """Shapes, ranks or axes do not fit what the operation expects."""


class InputTypeError(TapegradError, TypeError):
    """An input of the wrong type: non-numeric data, the wrong number of inputs, bad arguments."""


class UnknownOperationError(TapegradError, ValueError):
    """No registered operation has the requested name."""


class AmbiguousOperationError(TapegradError, ValueError):
    """Several plugins offer the requested name; qualify it as ``"plugin:Name"``."""


class RegistrationError(TapegradError, ValueError):
    """A run-time registration clashes with an existing name or is not an Operation."""


class GraphError(TapegradError, ValueError):
    """A Graph used out of order (an op outside a graph, a graph in the wrong state)."""


class BackwardError(GraphError):
    """``backward`` cannot run: nothing to differentiate, or an op returned unusable gradients."""


class CaptureError(GraphError):
    """A captured step cannot be recorded or replayed faithfully: ``fn`` returned something that
    is not a loss value or op output, or its first replay differed from an eager run.

    ``eager_result`` is what the step returned when it had run eagerly to the end before the error
    (its effects are then in place, as an eager call leaves them); None otherwise."""

    eager_result = None


class ArgumentError(TapegradError, ValueError):
    """A constructor, optimizer or trainer argument outside its valid range (a size below 1,
    a learning rate that is not positive, an ``eps`` of 0)."""


class OutOfRangeError(OperationError):
    """A value outside the range it must lie in: a label or id outside ``[0, classes)``, a
    target outside ``[0, 1]``."""


class MissingDependencyError(TapegradError, ImportError):
    """An optional dependency (an extra) is not installed; the message says what to install."""


class ParameterLoadError(TapegradError, ValueError):
    """A parameter file does not match the parameters it is loaded into."""


class NonFiniteError(OperationError):
    """A non-finite value (NaN or infinity) reached a place where it would spread silently."""


class TrainingError(TapegradError, ValueError):
    """Training data or training progress that cannot go on (mismatched data, diverged loss)."""


class ScaffoldError(TapegradError, ValueError):
    """``tapegrad new-plugin`` cannot write where it was asked to (bad name, folder not empty)."""


class CaptureWarning(UserWarning):
    """A step the Trainer would capture cannot be; it runs eagerly instead."""


class TapeWarning(UserWarning):
    """The tape keeps growing: forward passes in train mode that no backward consumes."""


class PluginWarning(UserWarning):
    """A plugin could not be loaded, or was blocked; everything else keeps working."""


class PluginUnavailableError(TapegradError, ValueError):
    """A plugin that was asked for by name is not installed, failed to load or is blocked.

    ``missing`` lists the names that match no plugin, ``unavailable`` the names of those
    that failed or are blocked.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...] = (), unavailable: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
        self.unavailable = unavailable


class ContractError(AssertionError):
    """An operation broke its contract; the message says where and how."""


class ContractSkip(unittest.SkipTest):
    """A check cannot run because a check it requires failed on the same case.

    ``prerequisite`` names that check and ``error`` is its failure. A ``unittest.SkipTest``,
    so pytest reports it as a skip wherever it is raised.
    """

    def __init__(self, reason: str, prerequisite: str, error: BaseException) -> None:
        super().__init__(reason)
        self.prerequisite = prerequisite
        self.error = error
