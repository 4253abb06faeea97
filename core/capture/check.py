"""The first replay's check: the replay on a copy, the eager run on the live objects, compared.

The second call of every record runs the record's program over one deep copy (a shared memo) of
everything the program touches (the graph with its ops, parameters and generator, the optimizers and
the other objects of replayable calls, the Variables passed in or read), and the step's function
eagerly, recorded again, over the live objects; the caller gets the eager result. Then one walk
compares the two worlds: every parameter's value and gradient, every attribute of every op and
optimizer (scalars included), the graph's mode and generator states, and the returned values with
the gradients of returned Variables. Nothing the user holds is replaced: the copy is thrown away.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from ..errors import CaptureError
from ..operation import Operation
from ..tape import Context, Leaf, Pass, Tape
from ..variable import Variable
from .recording import Application, Recording

if TYPE_CHECKING:
    from .program import Program

__all__ = ["copy_world", "first_difference", "structure_difference"]

CAUSES = (
    "Something the step does depends on Python state the record cannot see: a branch on a global or a counter, "
    "a value read where no guard sees it (math.log(loss)), an op attribute changed in place. Pass such values as "
    "arguments of the step (they become part of the record's key), compute them with ops, or run the step "
    "eagerly (call the function itself, or Trainer(capture=False))."
)


def copy_world(program: Program, leaves: list[Any]) -> tuple[Callable[..., Any], list[Any], dict[int, Any]]:
    """(the program bound to a deep copy of everything it touches, the leaves to call it with, the memo:
    id of each live object -> its copy). Array arguments are shared, not copied: nothing writes them."""
    world = [program.graph, *program.objects.values(), *(leaf for leaf in leaves if isinstance(leaf, Variable))]
    memo: dict[int, Any] = {id(leaf): leaf for leaf in leaves if not isinstance(leaf, Variable)}
    copy.deepcopy(world, memo)
    resolve = lambda obj: memo.get(id(obj), obj)  # noqa: E731
    return program.bind(resolve), [resolve(leaf) for leaf in leaves], memo


# -- one bit-exact comparison ------------------------------------------------------------------------
def first_difference(replayed: Any, eager: Any, path: str, seen: set[tuple[int, int]] | None = None) -> str | None:
    """Where ``replayed`` (the replay's world) and ``eager`` (the live one) first differ, bit for bit,
    walking arrays, Variables (value and gradient), generators, numbers, containers and objects'
    attributes; None when they agree. ``path`` names ``eager`` in the message."""
    if seen is None:
        seen = set()
    key = (id(replayed), id(eager))
    if key in seen:
        return None
    seen.add(key)
    if isinstance(eager, _NOT_STATE):
        return None  # the tape's bookkeeping (pairing, drawings), code
    if type(replayed) is not type(eager):
        return f"{path} is a {type(replayed).__name__} replayed and a {type(eager).__name__} eagerly"
    if isinstance(eager, ndarray):
        differs = array_difference(replayed, eager)
        return f"{path} {differs}" if differs else None
    if isinstance(eager, Variable):
        return first_difference(replayed.value, eager.value, f"{path}'s value", seen) or _grad_difference(
            replayed, eager, path
        )
    if isinstance(eager, np.random.Generator):
        same = replayed.bit_generator.state == eager.bit_generator.state
        return None if same else f"{path} (a random generator) has drawn differently"
    if isinstance(eager, float):
        return None if _same_float(replayed, eager) else f"{path} is {replayed!r} replayed and {eager!r} eagerly"
    if isinstance(eager, (int, str, bytes, bool, complex, type(None), np.generic, np.dtype)):
        same = replayed == eager or (replayed != replayed and eager != eager)
        return None if same else f"{path} is {replayed!r} replayed and {eager!r} eagerly"
    if isinstance(eager, (list, tuple)):
        if len(replayed) != len(eager):
            return f"{path} has {len(replayed)} items replayed and {len(eager)} eagerly"
        for i, (a, b) in enumerate(zip(replayed, eager)):
            found = first_difference(a, b, f"{path}[{i}]", seen)
            if found:
                return found
        return None
    if isinstance(eager, dict):
        if list(replayed) != list(eager) and set(map(_key, replayed)) != set(map(_key, eager)):
            keys = sorted(map(repr, replayed)), sorted(map(repr, eager))
            return f"{path} holds the keys {keys[0]} replayed and {keys[1]} eagerly"
        by_key = {_key(k): v for k, v in replayed.items()}
        for k, value in eager.items():
            found = first_difference(by_key.get(_key(k)), value, f"{path}[{_name(k)}]", seen)
            if found:
                return found
        return None
    if isinstance(eager, (set, frozenset)):
        return None if set(map(_key, replayed)) == set(map(_key, eager)) else f"{path} differs"
    attributes = _attributes(eager)
    if attributes is None:
        return None  # nothing it holds can be read generically (a lock, a file)
    mine = _attributes(replayed) or {}
    for name, value in attributes.items():
        found = first_difference(mine.get(name), value, f"{_owner(eager, path)}.{name}" if path else name, seen)
        if found:
            return found
    return None


_NOT_STATE = (
    Tape, Context, Pass, Leaf, types.ModuleType, type, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
)


def _grad_difference(replayed: Variable, eager: Variable, path: str) -> str | None:
    a, b = replayed.peek_grad(), eager.peek_grad()
    if a is None or b is None:
        if a is None and b is None:
            return None
        mine, theirs = ("missing" if g is None else "present" for g in (a, b))
        return f"{path}'s gradient is {mine} replayed and {theirs} eagerly"
    differs = array_difference(a, b)
    return f"{path}'s gradient {differs}" if differs else None


def _same_float(a: float, b: float) -> bool:
    return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (a != a and b != b)


def _key(key: Any) -> Any:
    """A dict key as the two worlds share it: an op, a Variable or another object by its name or type."""
    if isinstance(key, Operation):
        return ("op", key.name)
    if isinstance(key, Variable):
        return ("variable", key.name)
    try:
        hash(key)
    except TypeError:
        return ("object", type(key).__name__)
    if isinstance(key, (int, float, str, bytes, tuple, frozenset, type(None), bool, np.generic)):
        return key
    return ("object", type(key).__name__, getattr(key, "name", None))


def _name(key: Any) -> str:
    return key.label if isinstance(key, Operation) else repr(key)


def _owner(obj: Any, path: str) -> str:
    return obj.label if isinstance(obj, Operation) else path


def _attributes(obj: Any) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    if hasattr(obj, "__dict__"):
        found.update(vars(obj))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                found[name] = getattr(obj, name)
    if not found and not hasattr(obj, "__dict__"):
        return None
    found.pop("_registry", None)  # a Graph's plugin registry: shared, not state
    return found


def array_difference(
    replayed: np.ndarray | None, eager: np.ndarray | None, names: tuple[str, str] = ("replayed", "eagerly")
) -> str | None:
    """None when both are bit for bit the same; else what differs, in words (``names`` say which is which)."""
    first, second = names
    if replayed is None or eager is None:
        if replayed is eager:
            return None
        mine, theirs = ("missing" if a is None else "present" for a in (replayed, eager))
        return f"is {mine} {first} and {theirs} {second}"
    if replayed.dtype != eager.dtype or replayed.shape != eager.shape:
        return f"differs: {replayed.dtype}{replayed.shape} {first}, {eager.dtype}{eager.shape} {second}"
    if np.ascontiguousarray(replayed).tobytes() == np.ascontiguousarray(eager).tobytes():
        return None
    a, b = replayed.reshape(-1), eager.reshape(-1)
    with np.errstate(invalid="ignore"):
        if a.dtype.kind == "f":
            unequal = ~(((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b)))
        else:
            unequal = a != b
    flat = int(np.argmax(unequal)) if unequal.any() else 0
    index = [int(i) for i in np.unravel_index(flat, replayed.shape)] if replayed.ndim else []
    return f"differs at {index}: {a[flat].item()!r} {first}, {b[flat].item()!r} {second}"


# -- the structure of two runs -------------------------------------------------------------------------
def structure_difference(recorded: Recording, now: Recording) -> str | None:
    """Where an eager run took another path than the recorded one: the first op, loss, backward or call
    that differs."""
    for position, (old, new) in enumerate(zip(recorded.events, now.events)):
        if _event_key(recorded, old) != _event_key(now, new):
            return (
                f"step event {position} was {_describe(recorded, old)} when recorded and is {_describe(now, new)} "
                "now: a Python branch took another way than on the first call. Capture each branch as its own "
                "step, pass the condition as an argument (it becomes part of the record's key), or run the "
                "step eagerly."
            )
    if len(recorded.events) != len(now.events):
        return (
            f"the step made {len(recorded.events)} recorded events on its first call and {len(now.events)} now: a "
            "Python loop or branch changed. Pass its count or condition as an argument of the step."
        )
    return None


def _source_key(source: Any) -> Any:
    if source.kind in ("variable", "constant"):
        return (source.kind, id(source.obj))
    if source.kind == "number":
        return (source.kind, source.obj.dtype, source.obj.tobytes())
    return (source.kind, source.index, source.app, source.live)


def _event_key(recording: Recording, event: tuple[str, Any]) -> Any:
    kind, body = event
    if kind == "apply":
        app: Application = recording.apps[body]
        return (kind, id(app.op), app.train, tuple(map(_source_key, app.sources)))
    if kind == "loss":
        return (kind, body.app, _source_key(body.target))
    if kind == "backward":
        seeds = tuple((_source_key(o), _source_key(g)) for o, g, _ in body.seeds)
        return (kind, tuple(body.apps), tuple(body.losses), repr(body.loss_grad), seeds)
    args = tuple(a if not isinstance(a, (list, tuple)) else tuple(map(id, a)) for a in body.args)
    owner = tuple(map(id, body.owner)) if isinstance(body.owner, (list, tuple)) else id(body.owner)
    return (kind, owner, body.function, repr(args), repr(sorted(body.kwargs.items())))


def _describe(recording: Recording, event: tuple[str, Any]) -> str:
    kind, body = event
    if kind == "apply":
        return f"an application of {recording.apps[body].op.label}"
    if kind == "loss":
        return f"the loss of {recording.apps[body.app].op.label}"
    if kind == "backward":
        return "a backward()"
    return f"a call of {body.function.__qualname__}()"


def refused(message: str, result: Any) -> CaptureError:
    """``message`` as a CaptureError raised once the step ran eagerly to the end: ``eager_result`` holds
    what it returned (its effects are in place), for callers that go on eagerly."""
    error = CaptureError(message)
    error.eager_result = result
    return error
