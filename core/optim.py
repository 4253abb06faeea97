"""Optimizers: ``SGD`` and ``Adam``. Each updates the trainable variables it was given."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .arguments import check_number
from .errors import InputTypeError
from .parameter import Parameter
from .events import replayable
from .variable import Variable, clear_grads, peek_grads

__all__ = ["Optimizer", "SGD", "Adam"]


def _variables(parameter: Any) -> list[Variable]:
    if isinstance(parameter, Parameter):
        found: Iterable[Any] = parameter.variable_dict.values()
    elif isinstance(parameter, Mapping):
        found = parameter.values()
    elif hasattr(parameter, "graph") and hasattr(parameter.graph, "parameter"):
        found = parameter.graph.parameter.variable_dict.values()
    elif hasattr(parameter, "parameter") and isinstance(parameter.parameter, Parameter):
        found = parameter.parameter.variable_dict.values()
    else:
        found = parameter
    variables = list(found)
    bad = [v for v in variables if not isinstance(v, Variable)]
    if bad:
        raise InputTypeError(f"optimizer: expected a Parameter store or Variables, got {type(bad[0]).__name__}")
    return variables


class Optimizer:
    """Base class: holds the variables (a Parameter store, a dict, a list, or a model/graph).

    Subclasses write ``step()``; it is replayed by captured steps (as is ``zero_grad``). A step
    computes every update before it applies any, so an error while computing one (numpy's
    overflow, raised under the Trainer's ``np.errstate``) leaves every parameter as it was.
    """

    def __init__(self, parameter: Any, lr: float) -> None:
        self.variables = _variables(parameter)
        self.lr = check_number(type(self).__name__, "lr", lr, low=0.0, low_inclusive=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("step", "zero_grad"):
            method = cls.__dict__.get(name)
            if method is not None and not hasattr(method, "__wrapped__"):
                setattr(cls, name, replayable(method))

    @property
    def trainable(self) -> list[Variable]:
        return [v for v in self.variables if v.trainable and v.value.dtype.kind == "f"]

    @replayable
    def zero_grad(self) -> None:
        """Reset every gradient to zeros (lazily)."""
        clear_grads(self.variables)

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything the optimizer keeps besides its variables (hyperparameters, step
        count, moment buffers, by position in ``variables``); ``load_state_dict`` puts it back.
        Variables anywhere in it stay the same objects."""
        memo = {id(v): v for v in self.variables}
        return copy.deepcopy({k: v for k, v in vars(self).items() if k != "variables"}, memo)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        memo = {id(v): v for v in self.variables}
        vars(self).update(copy.deepcopy(dict(state), memo))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay."""

    def __init__(self, parameter: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(parameter, lr)
        self.momentum = check_number("SGD", "momentum", momentum, low=0.0, high=1.0, high_inclusive=False)
        self.weight_decay = check_number(type(self).__name__, "weight_decay", weight_decay, low=0.0)
        self._velocity: dict[int, np.ndarray] = {}  # by position in variables

    def step(self) -> None:
        lr, momentum, decay = self.lr, self.momentum, self.weight_decay
        updates, velocity = [], {}
        for i, (v, grad) in enumerate(zip(self.variables, peek_grads(self.variables))):
            if grad is None or not v.trainable:
                continue  # no gradient: zeros, nothing to do
            if decay:
                grad = grad + decay * v.value
            if momentum:
                buf = self._velocity.get(i)
                grad = velocity[i] = np.array(grad, dtype=v.value.dtype) if buf is None else buf * momentum + grad
            updates.append((v.value, lr * grad))
        self._velocity.update(velocity)  # state and parameters change together, once all is computed
        for value, update in updates:
            value -= update  # in place: whoever holds the value sees the update


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and optional L2 weight decay."""

    def __init__(
        self,
        parameter: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(parameter, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InputTypeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = check_number("Adam", "betas[0]", betas[0], low=0.0, high=1.0, high_inclusive=False)
        self.beta2 = check_number("Adam", "betas[1]", betas[1], low=0.0, high=1.0, high_inclusive=False)
        self.eps = check_number("Adam", "eps", eps, low=0.0, low_inclusive=False)
        self.weight_decay = check_number(type(self).__name__, "weight_decay", weight_decay, low=0.0)
        self.t = 0
        self._m: dict[int, np.ndarray] = {}  # first and second moments, by position in variables
        self._v: dict[int, np.ndarray] = {}

    def step(self) -> None:
        t = self.t + 1
        b1, b2 = self.beta1, self.beta2
        scale = self.lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        updates, moments = [], {}
        for i, (v, grad) in enumerate(zip(self.variables, peek_grads(self.variables))):
            if grad is None or not v.trainable:
                continue
            if self.weight_decay:
                grad = grad + self.weight_decay * v.value
            m, s = self._m.get(i), self._v.get(i)
            if m is None or s is None:
                m, s = np.zeros_like(v.value), np.zeros_like(v.value)
            m = m * b1 + (1.0 - b1) * grad
            s = s * b2 + (1.0 - b2) * grad * grad
            moments[i] = (m, s)
            updates.append((v.value, scale * m / (np.sqrt(s) + self.eps)))
        self.t = t  # state and parameters change together, once all is computed
        for i, (m, s) in moments.items():
            self._m[i], self._v[i] = m, s
        for value, update in updates:
            value -= update
