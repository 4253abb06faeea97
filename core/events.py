"""The kernel's events, and the one hook that carries them to whoever observes.

The kernel (``variable``, ``tape``, ``operation``, ``graph``, ``parameter``, ``optim``) knows
nothing of what watches it: it reports what happens to ``observer``, the one hook, and imports no
observer. Capture's recording (``tapegrad.capture``) and the profiler (``tapegrad.profile``) are
observers: they ``subscribe`` for the duration of their work. While nobody observes, ``observer``
is None and every event costs the kernel one test of it.

The events, in the order a training step meets them (each is a method of ``Observer``):

- ``created(variable)``: a Variable was made (``Variable.__init__``).
- ``run(kind, function, owner, args, kwargs, replayed)``: code that belongs to an op or to a
  replayable call is about to run; the observer runs it (``function(*args, **kwargs)``) and returns
  what it returns. ``kind`` is ``"forward"``, ``"loss"`` or ``"backward"`` (an op's own code;
  ``owner`` is the op) or ``"call"`` (a replayable call; ``owner`` is its first argument, the object
  it is called on). ``replayed`` is True when a captured step's replay makes the call.
- ``applied(ctx, arrays)``: an op application was made (its Context, with ``ctx.outputs`` set, and
  the arrays its code received). Applications an op's own code makes are part of that op's and are
  not reported.
- ``loss(ctx, target, array, value)``: a loss was computed against ``target`` (``array`` is its
  array); returns what ``loss()`` gives back to its caller (``value``, or a stand-in for it).
- ``backward(tape, seeds, loss_grad)``: a backward walk over ``tape`` is about to start.
- ``setting(obj, name)``: an attribute of an op, optimizer, scheduler or graph is being set.

``replayable`` marks what a captured step replays besides op applications and ``backward()``: the
optimizers' ``step``/``zero_grad``, clipping, schedulers' ``step``, ``Parameter.clear_grads``,
``Graph.train``/``eval``. Its calls are ``run`` events of kind ``"call"``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Observer", "Reported", "observer", "replayable", "subscribe", "underlying", "unsubscribe"]


class Observer:
    """What an observer of the kernel implements (every event does nothing by default)."""

    def created(self, variable: Any) -> None:
        """A Variable was made."""

    def run(
        self, kind: str, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        replayed: bool = False,
    ) -> Any:
        """Run ``function(*args, **kwargs)``: an op's own code (``kind`` "forward", "loss", "backward") or a
        replayable call (``kind`` "call"), ``owner`` being the op or the object called on."""
        return function(*args, **kwargs)

    def applied(self, ctx: Any, arrays: Any) -> None:
        """An op application was made: ``ctx`` (outputs set) and the arrays its code received."""

    def loss(self, ctx: Any, target: Any, array: Any, value: float) -> float:
        """A loss was computed; returns what ``loss()`` hands back to its caller."""
        return value

    def backward(self, tape: Any, seeds: list[Any], loss_grad: Any) -> None:
        """A backward walk over ``tape`` is about to start (``seeds``: per explicit seed, (the output Variable, the
        gradient as given, it as an array))."""

    def setting(self, obj: Any, name: str) -> None:
        """An attribute ``name`` of an op, optimizer, scheduler or graph is being set."""


#: The hook: None while nothing observes, else the observer (several subscribed: all of them, in turn).
observer: Observer | None = None

_subscribed: list[Observer] = []
_lock = threading.Lock()  # (subscribing from several threads at once loses no observer)


class _Together(Observer):
    """Several observers as one: each event goes to each, the first subscribed outermost."""

    def __init__(self, members: list[Observer]) -> None:
        self.members = list(members)

    def created(self, variable: Any) -> None:
        for member in self.members:
            member.created(variable)

    def run(
        self, kind: str, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        replayed: bool = False,
    ) -> Any:
        # each member sees the real arguments; what it runs is the next member's run (the last subscribed
        # innermost, right around the code)
        for member in reversed(self.members[1:]):
            function = _Next(member, kind, function, owner, args, kwargs, replayed)
        return self.members[0].run(kind, function, owner, args, kwargs, replayed)

    def applied(self, ctx: Any, arrays: Any) -> None:
        for member in self.members:
            member.applied(ctx, arrays)

    def loss(self, ctx: Any, target: Any, array: Any, value: float) -> float:
        for member in self.members:
            value = member.loss(ctx, target, array, value)
        return value

    def backward(self, tape: Any, seeds: list[Any], loss_grad: Any) -> None:
        for member in self.members:
            member.backward(tape, seeds, loss_grad)

    def setting(self, obj: Any, name: str) -> None:
        for member in self.members:
            member.setting(obj, name)


class _Next:
    """The next observer's ``run`` of the same event, as the function an outer observer runs."""

    def __init__(self, member: Observer, kind: str, function: Callable[..., Any], owner: Any,
                 args: tuple[Any, ...], kwargs: dict[str, Any], replayed: bool) -> None:
        self.call = (member, kind, function, owner, args, kwargs, replayed)

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        member, kind, function, owner, args, kwargs, replayed = self.call
        return member.run(kind, function, owner, args, kwargs, replayed)

    def __getattr__(self, name: str) -> Any:  # (its name, its docstring: the function's)
        return getattr(self.call[2], name)


def underlying(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function a ``run`` event runs: an outer observer is handed the next observer's ``run`` of it
    (several subscribed); this is the function itself, for observers that keep it (a recording)."""
    while isinstance(function, _Next):
        function = function.call[2]
    return function


def _update() -> None:
    global observer
    observer = None if not _subscribed else _subscribed[0] if len(_subscribed) == 1 else _Together(_subscribed)


def subscribe(new: Observer) -> None:
    """Start sending the kernel's events to ``new`` (as well as to those already subscribed)."""
    with _lock:
        _subscribed.append(new)
        _update()


def unsubscribe(old: Observer) -> None:
    """Stop sending events to ``old`` (a no-op if it is not subscribed)."""
    with _lock:
        if old in _subscribed:
            _subscribed.remove(old)
        _update()


class Reported:
    """Base of the kernel's objects whose attributes a captured step's own Python must not set (ops,
    optimizers, schedulers, graphs): setting one is a ``setting`` event."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if observer is not None:
            observer.setting(self, name)
        object.__setattr__(self, name, value)


def replayable(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method (or a function of a first object: ``clip_grad_norm(variables, ...)``) that a
    captured step replays: each call is a ``run`` event of kind ``"call"``; a replay calls the
    undecorated function (``__wrapped__``) again with the recorded arguments."""

    @functools.wraps(function)
    def call(owner: Any, *args: Any, **kwargs: Any) -> Any:
        if observer is None:
            return function(owner, *args, **kwargs)
        return observer.run("call", function, owner, (owner, *args), kwargs)

    call._tapegrad_replayable = True  # type: ignore[attr-defined]
    return call
