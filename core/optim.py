"""Optimizers (``SGD``, ``Adam``, ``AdamW``), gradient clipping and learning-rate schedules.

Each equals its PyTorch namesake (``torch.optim.SGD``, ``Adam``, ``AdamW``,
``torch.nn.utils.clip_grad_norm_``/``clip_grad_value_``, ``torch.optim.lr_scheduler.StepLR``,
``ExponentialLR``, ``CosineAnnealingLR``) in float64 to within rounding, given the same arguments
and gradients. An optimizer takes the Variables to update as a Parameter store, a model (``.graph``),
a dict or any iterable of Variables; it skips a Variable that is not trainable or has no gradient
(nothing arrived since ``zero_grad()``), as PyTorch skips ``grad is None``.

A step is all or nothing: it checks that it can apply every update before it changes any parameter
or state (``help(SGD.step)`` says what the check covers), then applies them in place, one parameter
at a time, holding at most the largest parameter's size of extra memory (twice that for SGD with
Nesterov momentum and weight decay).

**Captured steps** replay ``Optimizer.step``/``zero_grad``, ``clip_grad_norm``, ``clip_grad_value``
and ``LRScheduler.step`` by calling them again: each reads its hyperparameters (``optimizer.lr``) and
state live, so a schedule or clipping inside a captured step acts exactly as it does eagerly.

**An optimizer of your own** that captured steps replay::

    class SignSGD(Optimizer):
        def __init__(self, parameter, lr=0.01):
            super().__init__(parameter, lr)       # self.variables, self.lr (checked)
            self.steps = 0                        # every value a step changes: an attribute

        def step(self):                           # replayable, as every subclass's step/zero_grad
            for v in self.variables:
                grad = v.peek_grad()              # None: no gradient since zero_grad(); never write into it
                if grad is not None and v.trainable:
                    v.value -= self.lr * np.sign(grad)   # in place: whoever holds the value sees it
            self.steps += 1

A replay calls ``step()`` again, so it must read and write nothing but its own attributes and
Variables: no globals, no arguments that change from call to call (set ``optimizer.lr = ...`` instead).
Its ``state_dict()`` copies every attribute but ``variables``; ``load_state_dict`` puts them back
(a captured step's first replay is checked against an eager run from the same state that way).

**A schedule of your own**: subclass ``LRScheduler``, set your hyperparameters as attributes (named in
``hyperparameters``) before calling ``super().__init__(optimizer)``, and write ``lr_at(epoch)``, the
learning rate of an epoch from ``self.base_lr``::

    class LinearWarmup(LRScheduler):
        hyperparameters = ("epochs",)

        def __init__(self, optimizer, epochs):
            self.epochs = epochs
            super().__init__(optimizer)

        def lr_at(self, epoch):
            return self.base_lr * min(1.0, (epoch + 1) / self.epochs)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from .arguments import check_flag, check_number
from .errors import ArgumentError, InputTypeError, NonFiniteError, ParameterLoadError
from .events import Reported, replayable
from .parameter import Parameter
from .variable import Variable, clear_grads

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "Optimizer",
    "StepLR",
    "clip_grad_norm",
    "clip_grad_value",
]


# -- the Variables an optimizer or a clipping function is given ----------------------------------------


#: Entries of a parameter past which a step updates it a part at a time (see ``_apply_in_parts``): its
#: temporaries then take at most this many entries (1 MiB of float64), not the parameter's size.
PART = 1 << 17


def _variables(where: str, given: Any, *, reusable: bool = False) -> list[Variable]:
    """``given`` (a Parameter store, a model with ``.graph``, a dict, one Variable or an iterable of
    them) as a list of Variables. ``reusable``: refuse one-shot iterators (a generator), which a
    captured step's replay, calling again with the same argument, would find empty."""
    if isinstance(given, Variable):
        return [given]
    if isinstance(given, Parameter):
        found: Any = given.variable_dict.values()
    elif isinstance(given, Mapping):
        found = given.values()
    # (graph.graph_of's rule, by duck typing: graph.py reaches capture and drawing, which optim may not import)
    elif hasattr(given, "graph") and isinstance(getattr(given.graph, "parameter", None), Parameter):
        found = given.graph.parameter.variable_dict.values()
    elif isinstance(getattr(given, "parameter", None), Parameter):
        found = given.parameter.variable_dict.values()
    elif isinstance(given, Iterable) and not isinstance(given, (str, bytes, np.ndarray)):
        if reusable and iter(given) is given:
            raise InputTypeError(
                f"{where}: got a one-shot iterator ({type(given).__name__}); pass a list of Variables, a "
                "Parameter store or a model: a captured step calls this again with the same argument"
            )
        found = given
    else:
        raise InputTypeError(
            f"{where}: expected the Variables to use (a Parameter store, a model with .graph, a dict, or a list "
            f"of Variables), got {type(given).__name__}"
        )
    variables = list(found)
    for position, v in enumerate(variables):
        if not isinstance(v, Variable):
            raise InputTypeError(
                f"{where}: expected Variables, got {type(v).__name__} at position {position} "
                "(wrap arrays in tg.Variable)"
            )
    return variables


def _label(v: Variable, position: int) -> str:
    return repr(v.name) if v.name else f"the Variable at position {position}"


def _non_finite(array: np.ndarray) -> str:
    """Where ``array`` is not finite: ``"nan at [3, 2] (and 4 more)"``."""
    bad = ~np.isfinite(array)
    index = np.unravel_index(int(np.argmax(bad)), array.shape)
    count = int(np.count_nonzero(bad))
    where = f" at {[int(i) for i in index]}" if array.ndim else ""
    return f"{array[index]}{where}" + (f" (and {count - 1} more)" if count > 1 else "")


def _specs(variables: list[Variable]) -> list[dict[str, Any]]:
    return [{"name": v.name, "shape": tuple(v.shape), "dtype": str(v.dtype)} for v in variables]


def _check_specs(where: str, saved: Any, variables: list[Variable]) -> None:
    """Refuse a state saved for other Variables: another number, shape or dtype."""
    if not isinstance(saved, list) or not all(isinstance(s, Mapping) for s in saved):
        raise InputTypeError(f"{where}: the state dict's 'variables' must be a list of dicts, got {saved!r:.80}")
    if len(saved) != len(variables):
        raise ParameterLoadError(
            f"{where}: the state dict is for {len(saved)} Variables, this optimizer has {len(variables)}"
        )
    for position, (spec, v) in enumerate(zip(saved, variables)):
        for key, here in (("shape", tuple(v.shape)), ("dtype", str(v.dtype))):
            there = spec.get(key)
            there = tuple(there) if isinstance(there, list) else there  # (a shape read back from JSON, say)
            if there != here:
                raise ParameterLoadError(
                    f"{where}: {_label(v, position)}{f' (position {position})' if v.name else ''} has {key} {here} "
                    f"here and {there} in the state dict"
                )


def _entries(where: str, state: Any, expected: tuple[str, ...], of: str | None = None) -> Mapping[str, Any]:
    """``state``, a dict with exactly the keys ``expected``; ``of``: the class whose name the first key holds."""
    if not isinstance(state, Mapping):
        raise InputTypeError(
            f"{where}: expected a state dict (a dict, as state_dict() returns), got {type(state).__name__}"
        )
    kind = expected[0]
    if of is not None and kind in state and state[kind] != of:
        raise ParameterLoadError(f"{where}: the state dict is of {kind} {state[kind]!r}, this is {of}")
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    if missing or extra:
        raise ParameterLoadError(
            f"{where}: the state dict's keys must be {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    return state


# -- optimizers ------------------------------------------------------------------------------------------


def _distinct(where: str, variables: list[Variable], what: str) -> list[Variable]:
    """``variables``, refusing one given twice (``what``: what would happen to it twice)."""
    seen: dict[int, int] = {}
    for position, v in enumerate(variables):
        first = seen.setdefault(id(v), position)
        if first != position:
            raise ArgumentError(
                f"{where}: {_label(v, position)} is given twice (positions {first} and {position}); {what}"
            )
    return variables


def _optimized(where: str, given: Any) -> list[Variable]:
    """The Variables an optimizer is given: at least one, none twice."""
    variables = _variables(where, given)
    if not variables:
        raise ArgumentError(f"{where}: got no Variables to optimize (an empty list or Parameter store)")
    return _distinct(where, variables, "a step would update it twice")


def _replay_own(cls: type, names: tuple[str, ...]) -> None:
    """A subclass's own methods ``names``, made replayable (those it defines undecorated)."""
    for name in names:
        method = cls.__dict__.get(name)
        if method is not None and not hasattr(method, "__wrapped__"):
            setattr(cls, name, replayable(method))


class Optimizer(Reported):
    """Base class: ``variables`` (every Variable given, by position) and ``lr``.

    Subclasses write ``step()``; it and ``zero_grad()`` are replayed by captured steps (every
    subclass's own are marked so). ``state_dict()`` copies every attribute but ``variables`` (arrays,
    lists and dicts copied, Variables kept as they are); the built-in optimizers save public names.
    """

    def __init__(self, parameter: Any, lr: float) -> None:
        self.variables = _optimized(type(self).__name__, parameter)
        self.lr = check_number(type(self).__name__, "lr", lr, low=0.0, low_inclusive=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _replay_own(cls, ("step", "zero_grad"))

    @property
    def trainable(self) -> list[Variable]:
        """The Variables a step may change: trainable, holding floats."""
        return [v for v in self.variables if v.trainable and v.value.dtype.kind == "f"]

    @replayable
    def zero_grad(self) -> None:
        """Forget every gradient: until one arrives again, a step skips the Variable."""
        clear_grads(self.variables)

    def step(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define step()")

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": class name, "variables": [{"name", "shape", "dtype"}, ...], "attributes":
        {...}}``: a copy of every attribute but ``variables``; ``load_state_dict`` puts it back."""
        memo = {id(v): v for v in self.variables}
        attributes = copy.deepcopy({k: v for k, v in vars(self).items() if k != "variables"}, memo)
        return {"optimizer": type(self).__name__, "variables": _specs(self.variables), "attributes": attributes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back what ``state_dict`` returned, for the same class over Variables of the same
        number, shapes and dtypes (else ``ParameterLoadError``, naming what differs; nothing changes)."""
        where = f"{type(self).__name__}.load_state_dict"
        entries = _entries(where, state, ("optimizer", "variables", "attributes"), of=type(self).__name__)
        _check_specs(where, entries["variables"], self.variables)
        if not isinstance(entries["attributes"], Mapping):
            raise InputTypeError(f"{where}: 'attributes' must be a dict, got {type(entries['attributes']).__name__}")
        memo = {id(v): v for v in self.variables}
        vars(self).update(copy.deepcopy(dict(entries["attributes"]), memo))


class _ElementwiseOptimizer(Optimizer):
    """The built-in optimizers: an elementwise update per Variable (``_apply``), state by position.

    ``_state[i]`` holds Variable i's state, named by ``state_names`` (None before its first step);
    ``hyperparameters`` name the attributes ``state_dict`` saves and ``_checked`` validates.
    """

    hyperparameters: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, parameter: Any, **hyperparameters: Any) -> None:
        super().__init__(parameter, hyperparameters["lr"])
        vars(self).update(self._checked(hyperparameters))

    @property  # type: ignore[override]
    def variables(self) -> list[Variable]:
        """The Variables, by position. Assigning others (a new head to fine-tune) keeps the state of those
        that stay, wherever they move."""
        return self._variables

    @variables.setter
    def variables(self, given: Any) -> None:
        variables = _optimized(type(self).__name__, given)
        kept = dict(zip(map(id, getattr(self, "_variables", ())), getattr(self, "_state", ())))
        self._variables = variables
        self._state: list[list[Any]] = [kept.get(id(v)) or self._initial_state() for v in variables]
        self._prepare()

    # -- what each optimizer defines ------------------------------------------------------------------
    def _checked(self, values: Mapping[str, Any], resumed: bool = False) -> dict[str, Any]:
        """The hyperparameters, checked (the constructor's errors); ``resumed``: from a state dict."""
        raise NotImplementedError

    def _lr(self, value: Any, resumed: bool) -> float:
        # Above 0 when given; a schedule may have brought it to 0 since (CosineAnnealingLR's eta_min).
        return check_number(type(self).__name__, "lr", value, low=0.0, low_inclusive=resumed)

    def _initial_state(self) -> list[Any]:
        return [None] * len(self.state_names)

    def _incomplete(self, state: list[Any], hyperparameters: Mapping[str, Any]) -> str | None:
        """What a loaded state lacks for a step under ``hyperparameters`` (None: nothing)."""
        return None

    def _makes_state(self, state: list[Any]) -> bool:
        """Whether a step would make one of the state's arrays now (then its update is made whole)."""
        return any(s is None for s in state)

    def _apply(self, variables: list[Variable], grads: list[np.ndarray | None], states: list[list[Any]]) -> None:
        """Update each Variable's value in place where its gradient is not None, advancing its state."""
        raise NotImplementedError

    def _largest(self, grad_bound: float, value_bound: float) -> tuple[float, tuple[float, ...]]:
        """A bound on the magnitude of every number a step computes, given bounds on every gradient and
        value entry and the state's bounds (``_state_bounds``); and the state's bounds after the step."""
        raise NotImplementedError

    @property
    def _decay_reads_values(self) -> bool:
        """Whether the gradient a step uses depends on the values (L2 weight decay): then the check
        measures the values too."""
        return False

    def _measured_state_bounds(self) -> tuple[float, ...]:
        """``_state_bounds`` measured on the state arrays."""
        raise NotImplementedError

    # -- the step -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """What a step needs besides the state, worked out once (here and when a state is loaded)."""
        floats = [np.finfo(v.dtype).max for v in self.variables if v.dtype.kind == "f"]
        # A margin of 16 below the largest float covers the rounding of the bounds and of the sums of squares.
        self._limit = float(min(floats, default=np.inf)) / 16
        self._value_bound = self._limit / 16
        self._state_bounds = self._measured_state_bounds()

    def step(self) -> None:
        """Update every trainable Variable that has a gradient; all or nothing.

        The check, before anything changes: every gradient must be finite, and no number the step
        computes may overflow, whatever ``np.errstate`` says (else ``NonFiniteError`` naming the
        Variable, with values, gradients and state as they were). It costs one sum of squares
        per gradient (and per value, with L2 weight decay): from the largest entry these imply, bounds
        the optimizer keeps on its state, and values assumed below 1/256 of their dtype's largest
        number where they are not measured, it bounds every number the step computes; only when that
        bound comes within 1/16 of the largest number does it rehearse the updates on copies, a slice at
        a time, exactly. Not covered: without L2 weight decay, a value already beyond 1/256 of its
        dtype's largest number (7e305 in float64, 1.3e36 in float32) may still overflow while its update
        is applied; underflow is not checked.
        """
        grads = [v.peek_grad() if v.trainable else None for v in self.variables]
        total, value_bound, large = 0.0, self._value_bound, False
        try:
            for grad in grads:
                if grad is not None:
                    total += float(np.vdot(grad, grad))
                    large = large or grad.size > PART
            if self._decay_reads_values:
                squares = 0.0
                for v, grad in zip(self.variables, grads):
                    if grad is not None:
                        squares += float(np.vdot(v.value, v.value))
                value_bound = math.sqrt(squares)
        except (FloatingPointError, RuntimeWarning):  # a sum of squares overflowed: the caller asked numpy to raise
            total = math.inf
        fits = total < math.inf and value_bound < math.inf  # (false for NaN too)
        largest, bounds = self._largest(math.sqrt(total), value_bound) if fits else (math.inf, ())
        rehearsed = not largest <= self._limit
        if rehearsed:
            self._rehearse(grads)
        if large:
            self._apply_in_parts(grads)
        else:  # (the common case, in one call)
            self._apply(self.variables, grads, self._state)
        self._state_bounds = self._measured_state_bounds() if rehearsed else bounds

    def _apply_in_parts(self, grads: list[np.ndarray | None]) -> None:
        """``_apply`` to every Variable, a large one ``PART`` entries at a time: the update is elementwise, so
        each part's numbers are those of the whole, and its temporaries stay of a part's size (not the
        parameter's). A part's state is a slice of the state's arrays (updated in place) and a copy of its
        numbers (a step count), the last part's kept. A Variable whose state is not made yet (its first
        step), or whose value is not contiguous, is updated whole."""
        whole: tuple[list[Any], list[Any], list[Any]] = ([], [], [])  # (the common case: one call for all)
        for v, grad, state in zip(self.variables, grads, self._state):
            if grad is None:
                continue
            value = v.value
            if value.size <= PART or not value.flags.c_contiguous or self._makes_state(state):
                whole[0].append(v)
                whole[1].append(grad)
                whole[2].append(state)
                continue
            flat_value, flat_grad = value.reshape(-1), grad.reshape(-1)
            flat_state = [s.reshape(-1) if isinstance(s, np.ndarray) else s for s in state]
            for begin in range(0, value.size, PART):
                part = slice(begin, begin + PART)
                numbers = [s[part] if isinstance(s, np.ndarray) else s for s in flat_state]
                self._apply([Variable(flat_value[part])], [flat_grad[part]], [numbers])
            state[:] = [s if isinstance(s, np.ndarray) else n for s, n in zip(state, numbers)]
        if whole[0]:
            self._apply(*whole)

    def _rehearse(self, grads: list[np.ndarray | None]) -> None:
        """Every update applied to copies, a slice at a time, under numpy's raising errstate; the first
        non-finite gradient or overflow raises NonFiniteError."""
        name = type(self).__name__
        for position, (v, grad) in enumerate(zip(self.variables, grads)):
            if grad is not None and not np.isfinite(grad).all():
                raise NonFiniteError(
                    f"{name}.step: the gradient of {_label(v, position)} holds {_non_finite(grad)}; "
                    "no parameter or optimizer state was changed"
                )
        for position, (v, grad, state) in enumerate(zip(self.variables, grads, self._state)):
            if grad is None:
                continue
            value, flat = v.value.reshape(-1), grad.reshape(-1)
            arrays = [s.reshape(-1) if isinstance(s, np.ndarray) else s for s in state]
            size = max(1, -(-value.size // (len(state) + 3)))  # copies of the value and state, and temporaries
            for begin in range(0, value.size, size):
                part = slice(begin, begin + size)
                trial_value = value[part].copy()
                trial = [s[part].copy() if isinstance(s, np.ndarray) else s for s in arrays]
                try:
                    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
                        self._apply([Variable(trial_value)], [flat[part]], [trial])
                    # (a scalar that overflowed, lr / (1 - beta1**t) say, spreads inf without numpy's signal)
                    finite = all(np.isfinite(a).all() for a in (trial_value, *trial) if isinstance(a, np.ndarray))
                    cause = "" if finite else "to infinity; "
                except FloatingPointError as exc:
                    cause = f"{exc}; "
                del trial_value, trial  # (before the next slice's copies are made)
                if cause:
                    raise NonFiniteError(
                        f"{name}.step: updating {_label(v, position)} would overflow {v.dtype} ({cause}the largest "
                        f"gradient entry is {float(np.max(np.abs(grad))):.3g}, lr={self.lr:g}); no parameter or "
                        "optimizer state was changed"
                    ) from None

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": class name, "variables": [{"name", "shape", "dtype"}, ...], "hyperparameters":
        {...}, "state": [{...}, ...]}``: ``state[i]`` is Variable i's (``{}`` before its first step), by
        the names PyTorch uses. Plain data (numbers, tuples, strings, arrays, lists, dicts), copied."""
        state = [
            {
                key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in zip(self.state_names, entry)
            }
            for entry in self._state
        ]
        state = [{key: value for key, value in entry.items() if value is not None} for entry in state]
        return {
            "optimizer": type(self).__name__,
            "variables": _specs(self.variables),
            "hyperparameters": {name: getattr(self, name) for name in self.hyperparameters},
            "state": state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (as ``state_dict`` returned it; copied): a run resumed so goes on bit
        for bit as the uninterrupted one. A state of another optimizer class, or for another number,
        shape or dtype of Variables, raises ``ParameterLoadError`` naming what differs; a bad value
        raises the constructor's error; either way nothing changes."""
        where = f"{type(self).__name__}.load_state_dict"
        keys = ("optimizer", "variables", "hyperparameters", "state")
        entries = _entries(where, state, keys, of=type(self).__name__)
        _check_specs(where, entries["variables"], self.variables)
        saved = _entries(f"{where}: hyperparameters", entries["hyperparameters"], self.hyperparameters)
        hyperparameters = self._checked(saved, resumed=True)
        per_variable = entries["state"]
        if not isinstance(per_variable, list) or len(per_variable) != len(self.variables):
            raise ParameterLoadError(
                f"{where}: 'state' must be a list of one dict per Variable ({len(self.variables)})"
            )
        loaded = [
            self._loaded(where, position, v, entry, hyperparameters)
            for position, (v, entry) in enumerate(zip(self.variables, per_variable))
        ]
        vars(self).update(hyperparameters)
        self._state = loaded
        self._prepare()

    def _loaded(
        self, where: str, position: int, v: Variable, entry: Any, hyperparameters: Mapping[str, Any]
    ) -> list[Any]:
        """Variable ``position``'s state from a state dict, checked and copied."""
        if not isinstance(entry, Mapping):
            raise InputTypeError(f"{where}: state {position} must be a dict, got {type(entry).__name__}")
        unknown = [key for key in entry if key not in self.state_names]
        if unknown:
            raise ParameterLoadError(
                f"{where}: state {position} has unexpected keys {unknown}; expected some of {list(self.state_names)}"
            )
        state = self._initial_state()
        for index, key in enumerate(self.state_names):
            if key not in entry:
                continue
            value = entry[key]
            if key == "step":
                state[index] = check_number(where, f"state[{position}]['step']", value, low=0, integer=True)
                continue
            array = np.asarray(value)
            if array.shape != v.shape or array.dtype != v.dtype:
                raise ParameterLoadError(
                    f"{where}: state[{position}][{key!r}] has shape {array.shape} and dtype {array.dtype}; "
                    f"{_label(v, position)} has shape {v.shape} and dtype {v.dtype}"
                )
            if not np.isfinite(array).all():
                raise NonFiniteError(f"{where}: state[{position}][{key!r}] holds {_non_finite(array)}")
            state[index] = np.array(array, copy=True)
        lacking = self._incomplete(state, hyperparameters)
        if lacking:
            raise ParameterLoadError(f"{where}: state {position} {lacking}")
        return state

    def _largest_entry(self, index: int) -> float:
        """The largest magnitude in state entry ``index`` over every Variable (0 where there is none)."""
        top = 0.0
        for state in self._state:
            array = state[index]
            if isinstance(array, np.ndarray) and array.size:
                top = max(top, float(array.max()), -float(array.min()))
        return top


class SGD(_ElementwiseOptimizer):
    """Stochastic gradient descent, with momentum, dampening, Nesterov momentum and L2 weight decay.

    As PyTorch computes it, per Variable: ``d = grad + weight_decay * value``; with momentum, the
    buffer ``b`` is ``d`` itself on the first step, then ``momentum * b + (1 - dampening) * d``, and
    ``d`` becomes ``d + momentum * b`` (Nesterov) or ``b``; then ``value -= lr * d``. State per
    Variable: ``momentum_buffer`` (with momentum).
    """

    hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    state_names = ("momentum_buffer",)
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool

    def __init__(
        self,
        parameter: Any,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            parameter, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )

    def _checked(self, values: Mapping[str, Any], resumed: bool = False) -> dict[str, Any]:
        where = type(self).__name__
        checked = {
            "lr": self._lr(values["lr"], resumed),
            "momentum": check_number(where, "momentum", values["momentum"], low=0.0, high=1.0, high_inclusive=False),
            "dampening": check_number(where, "dampening", values["dampening"], low=0.0, high=1.0),
            "weight_decay": check_number(where, "weight_decay", values["weight_decay"], low=0.0),
            "nesterov": check_flag(where, "nesterov", values["nesterov"]),
        }
        if checked["nesterov"] and (checked["momentum"] == 0 or checked["dampening"] != 0):
            raise ArgumentError(
                f"{where}: nesterov=True needs a momentum above 0 and dampening 0, got momentum="
                f"{checked['momentum']:g} and dampening={checked['dampening']:g}"
            )
        return checked

    def _apply(self, variables: list[Variable], grads: list[np.ndarray | None], states: list[list[Any]]) -> None:
        lr, momentum, dampening, decay, nesterov = (
            self.lr,
            self.momentum,
            self.dampening,
            self.weight_decay,
            self.nesterov,
        )
        for v, grad, state in zip(variables, grads, states):
            if grad is None:
                continue
            value = v.value
            # ``own``: d is an array this update made. The gradient may be shared with whoever made it, so
            # it is never written into; at most one array of the value's size is made (two with Nesterov
            # and weight decay).
            d, own = grad, False
            if decay:
                d = value * decay
                d += grad
                own = True
            if momentum:
                buffer = state[0]
                if buffer is None:
                    buffer = state[0] = np.array(d, copy=True)
                else:
                    buffer *= momentum
                    if dampening:  # (no Nesterov then: d is not needed afterwards)
                        if own:
                            d *= 1.0 - dampening
                        else:
                            d, own = d * (1.0 - dampening), True
                    buffer += d
                if nesterov:
                    ahead = buffer * momentum
                    ahead += d
                    d, own = ahead, True
                else:
                    d, own = buffer, False
            if own:
                d *= lr
                value -= d
            else:
                value -= lr * d

    @property
    def _decay_reads_values(self) -> bool:
        return self.weight_decay > 0

    def _makes_state(self, state: list[Any]) -> bool:
        return bool(self.momentum) and state[0] is None

    def _largest(self, grad_bound: float, value_bound: float) -> tuple[float, tuple[float, ...]]:
        lr, momentum, values = self.lr, self.momentum, value_bound
        d = grad_bound + self.weight_decay * values
        buffer = 0.0
        if momentum:
            buffer = momentum * self._state_bounds[0] + d
            d = d + momentum * buffer if self.nesterov else buffer
        return max(d, buffer, values + lr * d), (buffer,)

    def _measured_state_bounds(self) -> tuple[float, ...]:
        return (self._largest_entry(0),)


class Adam(_ElementwiseOptimizer):
    """Adam (Kingma & Ba, Algorithm 1), as PyTorch computes it, with L2 weight decay and AMSGrad.

    Per Variable, at its own step count t (which advances only on steps where it has a gradient):
    ``d = grad + weight_decay * value``; ``m += (1 - beta1) * (d - m)``; ``v = beta2 * v + (1 - beta2)
    * d * d`` (AMSGrad: ``v_max = max(v_max, v)`` is used below instead of v); ``value -= lr / (1 - beta1**t)
    * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``, which is ``lr * m_hat / (sqrt(v_hat) + eps)``. State per
    Variable: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v) and ``max_exp_avg_sq`` (AMSGrad).
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    state_names = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    amsgrad: bool
    #: AdamW's: the decay multiplies the value by ``1 - lr * weight_decay`` instead of joining the gradient
    decoupled_weight_decay: ClassVar[bool] = False

    def __init__(
        self,
        parameter: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(parameter, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _checked(self, values: Mapping[str, Any], resumed: bool = False) -> dict[str, Any]:
        where = type(self).__name__
        betas = values["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InputTypeError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
        return {
            "lr": self._lr(values["lr"], resumed),
            "betas": tuple(
                check_number(where, f"betas[{i}]", beta, low=0.0, high=1.0, high_inclusive=False)
                for i, beta in enumerate(betas)
            ),
            "eps": check_number(where, "eps", values["eps"], low=0.0, low_inclusive=False),
            "weight_decay": check_number(where, "weight_decay", values["weight_decay"], low=0.0),
            "amsgrad": check_flag(where, "amsgrad", values["amsgrad"]),
        }

    def _initial_state(self) -> list[Any]:
        return [0, None, None, None]

    def _incomplete(self, state: list[Any], hyperparameters: Mapping[str, Any]) -> str | None:
        step, exp_avg, exp_avg_sq, top = state
        if (exp_avg is None) != (exp_avg_sq is None) or (exp_avg is None) != (step == 0):
            return "must have 'exp_avg' and 'exp_avg_sq' with a 'step' above 0, or neither with step 0"
        if hyperparameters["amsgrad"] and exp_avg is not None and top is None:
            return "lacks 'max_exp_avg_sq', which amsgrad=True needs"
        return None

    def _apply(self, variables: list[Variable], grads: list[np.ndarray | None], states: list[list[Any]]) -> None:
        lr, (beta1, beta2), eps, decay, amsgrad = self.lr, self.betas, self.eps, self.weight_decay, self.amsgrad
        coupled = decay and not self.decoupled_weight_decay
        for v, grad, state in zip(variables, grads, states):
            if grad is None:
                continue
            value = v.value
            state[0] = step = state[0] + 1
            if state[1] is None:
                state[1], state[2] = np.zeros_like(value), np.zeros_like(value)
                if amsgrad:
                    state[3] = np.zeros_like(value)
            exp_avg, exp_avg_sq = state[1], state[2]
            if decay and not coupled:
                value *= 1.0 - lr * decay
            # ``temp`` is the one array of the value's size this update makes (an array also for shape (),
            # where numpy's operators make scalars). The gradient may be shared, so it is never written
            # into, and the decayed gradient is computed twice rather than kept in a second array.
            temp = np.empty_like(value)
            if coupled:
                np.multiply(value, decay, out=temp)
                temp += grad
                temp -= exp_avg
            else:
                np.subtract(grad, exp_avg, out=temp)
            temp *= 1.0 - beta1
            exp_avg += temp  # PyTorch's lerp: m + (1 - beta1) * (d - m)
            if coupled:
                np.multiply(value, decay, out=temp)
                temp += grad
                temp *= temp
            else:
                np.multiply(grad, grad, out=temp)
            temp *= 1.0 - beta2
            exp_avg_sq *= beta2
            exp_avg_sq += temp
            second = np.maximum(state[3], exp_avg_sq, out=state[3]) if amsgrad else exp_avg_sq
            np.sqrt(second, out=temp)
            temp /= (1.0 - beta2**step) ** 0.5
            temp += eps
            np.divide(exp_avg, temp, out=temp)
            temp *= lr / (1.0 - beta1**step)
            value -= temp

    @property
    def _decay_reads_values(self) -> bool:
        return self.weight_decay > 0 and not self.decoupled_weight_decay

    def _largest(self, grad_bound: float, value_bound: float) -> tuple[float, tuple[float, ...]]:
        lr, (beta1, beta2), eps, decay = self.lr, self.betas, self.eps, self.weight_decay
        values = value_bound
        old_m, old_v = self._state_bounds
        if self.decoupled_weight_decay:
            values = max(values, abs(1.0 - lr * decay) * values)
            d = grad_bound
        else:
            d = grad_bound + decay * values
        m, v = max(old_m, d), max(old_v, d * d)
        ratio = m / eps  # the denominator is at least eps
        update = ratio * lr / (1.0 - beta1)  # 1 - beta1**t is at least 1 - beta1
        denominator = math.sqrt(v) / math.sqrt(1.0 - beta2) + eps
        return max(d + old_m, d * d, v, denominator, ratio, update, values + update), (m, v)

    def _measured_state_bounds(self) -> tuple[float, ...]:
        return self._largest_entry(1), max(self._largest_entry(2), self._largest_entry(3))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as PyTorch computes it: before Adam's
    update, ``value *= 1 - lr * weight_decay``; the gradient is left alone. Default decay 1e-2."""

    decoupled_weight_decay = True

    def __init__(
        self,
        parameter: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(parameter, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# -- gradient clipping -------------------------------------------------------------------------------------


def _gradients(where: str, given: Any, *, checked: bool = True) -> list[tuple[int, Variable, np.ndarray]]:
    """(position, Variable, gradient) of every trainable Variable with a gradient, each checked finite
    (``checked=False``: not yet; ``_check_finite`` does it)."""
    variables = _distinct(where, _variables(where, given, reusable=True), "it would be clipped twice")
    found = []
    for position, v in enumerate(variables):
        grad = v.peek_grad()
        if grad is not None and v.trainable:
            found.append((position, v, grad))
    if checked:
        _check_finite(where, found)
    return found


def _check_finite(where: str, found: list[tuple[int, Variable, np.ndarray]]) -> None:
    """``NonFiniteError`` naming the first gradient of ``found`` with a NaN or an infinity."""
    for position, v, grad in found:
        if not np.isfinite(grad).all():
            raise NonFiniteError(
                f"{where}: the gradient of {_label(v, position)} holds {_non_finite(grad)}; nothing was clipped"
            )


def _squares(grad: np.ndarray) -> float:
    """The sum of ``grad``'s squares: inf when it overflows (NaN when an entry is NaN)."""
    flat = grad.reshape(-1)
    try:
        return float(flat.dot(flat))
    except (FloatingPointError, RuntimeWarning):  # (the caller asked numpy to raise)
        return math.inf


def _norm(grad: np.ndarray, p: float) -> float:
    """The p-norm of a finite array, without overflow where the norm itself does not overflow."""
    if p == math.inf:
        return max(float(grad.max()), -float(grad.min())) if grad.size else 0.0
    if p == 2.0:
        squares = _squares(grad)
        if squares < math.inf:
            return math.sqrt(squares)
    with np.errstate(over="ignore", under="ignore"):  # scaled by the largest magnitude: the powers stay in range
        top = float(np.max(np.abs(grad))) if grad.size else 0.0
        if top == 0.0:
            return 0.0
        return top * float(np.sum((np.abs(grad) / top) ** p)) ** (1.0 / p)


@replayable
def clip_grad_norm(variables: Any, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale the gradients of ``variables`` together so that their total ``norm_type``-norm is at most
    ``max_norm``; return the total norm before clipping (a float).

    As PyTorch's ``clip_grad_norm_``: the total norm is the norm of the Variables' norms; when
    ``max_norm / (total + 1e-6)`` is below 1, every gradient is multiplied by it. ``norm_type`` is a
    number above 0 or ``math.inf`` (the largest magnitude). ``variables``: a list of Variables, a
    Parameter store or a model (not a one-shot iterator: a captured step calls this again with it);
    Variables that are not trainable or have no gradient are skipped. A non-finite gradient raises
    ``NonFiniteError`` before anything changes.
    """
    where = "clip_grad_norm"
    limit = check_number(where, "max_norm", max_norm, low=0.0, low_inclusive=False)
    p = (
        norm_type
        if norm_type == math.inf
        else check_number(where, "norm_type", norm_type, low=0.0, low_inclusive=False)
    )
    found = _gradients(where, variables, checked=p != 2.0)
    if p == 2.0:  # each gradient read once: a finite sum of squares proves every entry finite
        squares = [_squares(grad) for _, _, grad in found]
        if all(s < math.inf for s in squares):  # (false for NaN too)
            norms = [math.sqrt(s) for s in squares]
        else:
            _check_finite(where, found)
            norms = [_norm(grad, p) for _, _, grad in found]
    else:
        norms = [_norm(grad, p) for _, _, grad in found]
    if p == math.inf:
        total = max(norms, default=0.0)
    elif p == 2.0:
        total = math.hypot(*norms)
    else:
        top = max(norms, default=0.0)
        total = top * math.fsum((n / top) ** p for n in norms) ** (1.0 / p) if top else 0.0
    if not math.isfinite(total):
        raise NonFiniteError(f"{where}: the total {p:g}-norm of the gradients overflows a float; nothing was clipped")
    coefficient = limit / (total + 1e-6)
    if coefficient < 1.0:
        for _, v, _ in found:
            v.grad *= coefficient  # the Variable's own array (a shared one is copied first)
    return total


@replayable
def clip_grad_value(variables: Any, clip_value: float) -> None:
    """Clip every gradient entry of ``variables`` into ``[-clip_value, clip_value]``, as PyTorch's
    ``clip_grad_value_``. ``variables`` as for ``clip_grad_norm``; a non-finite gradient raises
    ``NonFiniteError`` before anything changes."""
    where = "clip_grad_value"
    limit = check_number(where, "clip_value", clip_value, low=0.0, low_inclusive=False)
    for _, v, _ in _gradients(where, variables):
        grad = v.grad  # the Variable's own array (a shared one is copied first)
        assert grad is not None  # (a float Variable)
        np.clip(grad, -limit, limit, out=grad)


# -- learning-rate schedules --------------------------------------------------------------------------------


class LRScheduler(Reported):
    """Base class: sets ``optimizer.lr`` to ``lr_at(last_epoch)`` at each ``step()``.

    The constructor records ``base_lr`` (the optimizer's lr then) and sets epoch 0's rate; each
    ``step()`` advances ``last_epoch`` by one, as PyTorch's schedulers do. Rates come from the closed
    form of each schedule (PyTorch documents the same; its chained form differs by rounding only), so
    an ``optimizer.lr`` set by hand lasts until the next ``step()``. Captured steps replay ``step()``
    (every subclass's own too).
    """

    #: the attributes ``state_dict`` saves besides the epoch and the rates (checked again on load)
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise InputTypeError(
                f"{type(self).__name__}: expected a tapegrad.optim optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self.optimizer.lr = self._last_lr = self.lr_at(0)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _replay_own(cls, ("step",))

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0 is the constructor's)."""
        raise NotImplementedError(f"{type(self).__name__} must define lr_at(epoch)")

    @replayable
    def step(self) -> None:
        """Advance one epoch and set the optimizer's lr."""
        self.last_epoch += 1
        self.optimizer.lr = self._last_lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        """The learning rate the latest ``step()`` (or the constructor) set."""
        return self._last_lr

    def _checked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters, checked (the constructor's errors)."""
        return dict(values)

    def state_dict(self) -> dict[str, Any]:
        """``{"scheduler": class name, "last_epoch", "base_lr", "last_lr", "hyperparameters": {...}}``."""
        return {
            "scheduler": type(self).__name__,
            "last_epoch": self.last_epoch,
            "base_lr": self.base_lr,
            "last_lr": self._last_lr,
            "hyperparameters": {name: getattr(self, name) for name in self.hyperparameters},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (as ``state_dict`` returned it); the optimizer's lr is its own state's.
        A state of another schedule raises ``ParameterLoadError``, a bad value the constructor's
        error; either way nothing changes."""
        where = f"{type(self).__name__}.load_state_dict"
        keys = ("scheduler", "last_epoch", "base_lr", "last_lr", "hyperparameters")
        entries = _entries(where, state, keys, of=type(self).__name__)
        last_epoch = check_number(where, "last_epoch", entries["last_epoch"], low=0, integer=True)
        base_lr = check_number(where, "base_lr", entries["base_lr"], low=0.0, low_inclusive=False)
        last_lr = check_number(where, "last_lr", entries["last_lr"], low=0.0)
        hyperparameters = self._checked(
            _entries(f"{where}: hyperparameters", entries["hyperparameters"], self.hyperparameters)
        )
        vars(self).update(hyperparameters, last_epoch=last_epoch, base_lr=base_lr, _last_lr=last_lr)


class StepLR(LRScheduler):
    """``base_lr * gamma ** (epoch // step_size)``: the rate times gamma every ``step_size`` epochs."""

    hyperparameters = ("step_size", "gamma")
    step_size: int
    gamma: float

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        vars(self).update(self._checked({"step_size": step_size, "gamma": gamma}))
        super().__init__(optimizer)

    def _checked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "step_size": check_number(type(self).__name__, "step_size", values["step_size"], low=1, integer=True),
            "gamma": check_number(type(self).__name__, "gamma", values["gamma"], low=0.0, low_inclusive=False),
        }

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``base_lr * gamma ** epoch``: the rate times gamma every epoch."""

    hyperparameters = ("gamma",)
    gamma: float

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        vars(self).update(self._checked({"gamma": gamma}))
        super().__init__(optimizer)

    def _checked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {"gamma": check_number(type(self).__name__, "gamma", values["gamma"], low=0.0, low_inclusive=False)}

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma**epoch


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``: from base_lr down to eta_min
    at epoch T_max along a half cosine (and back up over the next T_max epochs, as PyTorch's does)."""

    hyperparameters = ("T_max", "eta_min")
    T_max: int
    eta_min: float

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        vars(self).update(self._checked({"T_max": T_max, "eta_min": eta_min}))
        super().__init__(optimizer)

    def _checked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "T_max": check_number(type(self).__name__, "T_max", values["T_max"], low=1, integer=True),
            "eta_min": check_number(type(self).__name__, "eta_min", values["eta_min"], low=0.0),
        }

    def lr_at(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
