"""tapegrad: a numpy deep-learning framework whose every operation is a plugin.

The core is small: ``Variable``, ``Parameter``, ``Graph`` (a tape of forward operations),
the ``Operation``/``Loss`` contract, the plugin registry and ``gradcheck``. Operations,
first-party included, arrive through pluggy entry points in group ``tapegrad``, loaded
the first time an operation is looked up: ``import tapegrad`` imports no plugin.
"""

from __future__ import annotations

from typing import Any

from .arguments import check_flag, check_number
from .broadcast import as_shape, broadcast_error, broadcast_shape, unbroadcast
from .draw import draw
from .errors import (
    FLOAT_SIGNALS,
    AmbiguousOperationError,
    ArgumentError,
    BackwardError,
    CaptureError,
    CaptureWarning,
    GraphError,
    InputTypeError,
    MissingDependencyError,
    NonFiniteError,
    OperationError,
    OutOfRangeError,
    ParameterLoadError,
    PluginUnavailableError,
    PluginWarning,
    RegistrationError,
    ShapeError,
    TapegradError,
    TapeWarning,
    TrainingError,
    UnknownOperationError,
)
from .gradcheck import GradcheckReport, gradcheck, numerical_gradient_check
from .graph import Graph
from .hookspecs import hookimpl, hookspec
from .operation import Loss, Operation, Sample
from .parameter import Parameter
from .profile import profile
from .registry import OperationInfo, PluginInfo, Registry, default_registry, register_operation
from .tape import Context, Tape
from .variable import Constant, Variable, constant
from .version import __version__

__all__ = [
    "FLOAT_SIGNALS",
    "AmbiguousOperationError",
    "ArgumentError",
    "BackwardError",
    "CaptureError",
    "CaptureWarning",
    "Constant",
    "Context",
    "GradcheckReport",
    "Graph",
    "GraphError",
    "InputTypeError",
    "Loss",
    "MissingDependencyError",
    "NonFiniteError",
    "Operation",
    "OperationError",
    "OperationInfo",
    "OutOfRangeError",
    "Parameter",
    "ParameterLoadError",
    "PluginInfo",
    "PluginUnavailableError",
    "PluginWarning",
    "Registry",
    "RegistrationError",
    "Sample",
    "ShapeError",
    "Tape",
    "TapeWarning",
    "TapegradError",
    "Trainer",
    "TrainingError",
    "UnknownOperationError",
    "Variable",
    "__version__",
    "as_shape",
    "broadcast_error",
    "broadcast_shape",
    "check_flag",
    "check_number",
    "constant",
    "default_registry",
    "draw",
    "gradcheck",
    "hookimpl",
    "hookspec",
    "numerical_gradient_check",
    "profile",
    "register_operation",
    "unbroadcast",
]


def __getattr__(name: str) -> Any:
    # Training utilities live apart from the autodiff core and load on first use.
    if name == "Trainer":
        from .training import Trainer

        return Trainer
    raise AttributeError(f"module 'tapegrad' has no attribute {name!r}")
