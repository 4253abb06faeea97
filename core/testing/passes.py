"""The multi-application checks: one op instance applied several times.

In one pass (``check_fan_out``: the same inputs fed to three applications; ``check_reuse_in_one_pass``:
three independent inputs), each application's gradients must equal that application run alone.
Across passes: ``check_after_parameters_change`` applies the op again after its parameters
change and compares it with a fresh op holding the new values; ``check_capture`` records a
captured step and replays it on other values. Together they catch state kept on ``self``
instead of ``ctx``, and anything computed once and reused when it should not be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..capture.check import first_difference
from ..errors import ContractError
from ..graph import Graph
from ..operation import Operation, Sample
from ..variable import Variable, as_array
from .case import (
    OP_FAULTS,
    SEED,
    Check,
    OperationCase,
    close,
    detail_of,
    float_outputs,
    guarded,
    outputs_of,
    pass_results,
    requires,
    sample_arrays,
    upstream_gradients,
)
from .checks import check_gradient_structure

__all__ = [
    "FAN_OUT",
    "STATE_HINT",
    "check_after_parameters_change",
    "check_capture",
    "check_fan_out",
    "check_reuse_in_one_pass",
]


# -- several applications in one pass (check_fan_out, check_reuse_in_one_pass) -------------------
#: How many applications check_fan_out feeds the same input Variables to. Gradient accumulation
#: treats the first contribution (kept by reference), the second (added into a new array) and the
#: later ones (added in place) differently: three reach every path.
FAN_OUT = 3


STATE_HINT = (
    "Per-call state (masks, shapes, inputs) must live in ctx, not on self: one application's "
    "backward saw what another application left there"
)


@dataclass
class _Application:
    """One application in a pass of several: its input arrays, the Variable each goes to
    (applications naming the same slot share that Variable), its target, how messages name it."""

    inputs: list[np.ndarray]
    slots: list[str]
    target: Any
    label: str


@dataclass
class _Pass:
    """What one pass left: every input slot's and parameter's gradient, the graph generator's
    state before each application, whether the outputs were finite, and any array that backward
    received or returned and that was changed afterwards."""

    grads: dict[str, np.ndarray]
    rng_states: list[Mapping[str, Any]]
    finite: bool = True
    changed: str | None = None


def _apply(
    case: OperationCase,
    apps: Sequence[tuple[int, _Application]],
    rng_states: Sequence[Mapping[str, Any]] | None = None,
    watch: bool = False,
) -> _Pass:
    """A fresh op applied once per entry of ``apps`` (in order), then one backward.

    Application ``index`` gets upstream gradients drawn from its index (a loss, its loss), so a
    pass of one application reproduces that application's contribution; ``rng_states`` replays
    the generator (Dropout's masks). With ``watch``, every array backward is handed or returns
    is compared, after the pass, with a copy taken at that moment.
    """
    graph, op = case.build()
    variables: dict[str, Variable] = {}
    for _, app in apps:
        for slot, array in zip(app.slots, app.inputs):
            variables.setdefault(slot, Variable(array.copy(), name=slot))
    seeds: dict[Variable, np.ndarray] = {}
    states: list[Mapping[str, Any]] = []
    owners: dict[int, str] = {}
    finite = True
    for n, (index, app) in enumerate(apps):
        if rng_states is not None:
            graph.rng.bit_generator.state = rng_states[n]
        states.append(graph.rng.bit_generator.state)
        result = op.forward(*(variables[slot] for slot in app.slots))
        for ctx in graph.forward_ops:
            if ctx.op is op:
                owners.setdefault(id(ctx), app.label)
        finite = finite and all(np.isfinite(o.value).all() for o in float_outputs(result))
        if case.is_loss:
            value = op.loss(app.target)  # type: ignore[attr-defined]
            finite = finite and math.isfinite(value)
        else:
            seeds.update(upstream_gradients(float_outputs(result), seed=SEED + 10 + index))
    if not case.is_loss and not seeds:
        graph.clear()
        return _Pass({}, states, finite)  # no float output: nothing to differentiate
    records: list[tuple[str, np.ndarray, np.ndarray]] = []
    if watch:
        op.backward = _watched(op.backward, owners, records)  # type: ignore[method-assign]
    graph.backward(grads=seeds)
    changed = next((what for what, array, copy in records if not np.array_equal(array, copy, equal_nan=True)), None)
    grads = {name: v.grad for name, v in variables.items() if v.differentiable}
    grads.update({f"{op.name}.{k}": p.grad for k, p in op.parameters().items() if p.differentiable})
    kept = {name: g for name, g in grads.items() if g is not None}
    finite = finite and all(np.isfinite(g).all() for g in kept.values())
    return _Pass(kept, states, finite, changed)


def _watched(
    backward: Callable[..., Any], owners: dict[int, str], records: list[tuple[str, np.ndarray, np.ndarray]]
) -> Callable[..., Any]:
    """``backward``, noting (with a copy) each array it is handed and each array it returns."""

    def watched(ctx: Any, grad: Any) -> Any:
        who = owners.get(id(ctx), "an application")
        for g in grad if isinstance(grad, tuple) else (grad,):
            if isinstance(g, np.ndarray):
                records.append((f"the upstream gradient handed to backward for {who}", g, g.copy()))
        out = backward(ctx, grad)
        for i, g in enumerate(out if isinstance(out, tuple) else (out,)):
            if isinstance(g, np.ndarray):
                records.append((f"the gradient of input {i} that backward returned for {who}", g, g.copy()))
        return out

    return watched


def _usable(case: OperationCase, app: _Application) -> bool:
    """Does one application on these inputs run, forward and backward, with finite results
    (and no overflow)? Inputs the op cannot take are not used, rather than reported."""
    try:
        return bool(guarded(case, "", lambda: _apply(case, [(0, app)])).finite)
    except ContractError:
        return False


def _mismatch(whole: _Pass, parts: list[_Pass]) -> tuple[str, np.ndarray, list[np.ndarray], tuple[int, ...]] | None:
    """The first gradient of ``whole`` that is not the sum of its contributions in ``parts``:
    (name, gradient, contributions, worst index); None when every one matches."""
    for name, got in whole.grads.items():
        contributions = [p.grads[name] for p in parts if name in p.grads]
        expected = np.sum(contributions, axis=0) if contributions else np.zeros_like(got)
        # Summing in another order differs by rounding only, relative to the contributions' size.
        tol = 1e-9 + 1e-7 * np.sum(np.abs(contributions), axis=0) if contributions else 1e-9
        err = np.abs(got - expected)
        if not (err <= tol).all():
            worst = np.unravel_index(int(np.argmax(err - tol)), got.shape) if got.ndim else ()
            return name, got, contributions, tuple(int(i) for i in worst)
    return None


def _run_applications(case: OperationCase, check: Check, apps: list[_Application]) -> tuple[_Pass, list[_Pass]]:
    """All of ``apps`` in one pass (watched), then each alone on a fresh op with the generator
    where that pass had it: the whole, and the parts its gradients must add up to."""
    try:
        whole = guarded(case, check, lambda: _apply(case, list(enumerate(apps)), watch=True))
    except ContractError as exc:
        cause = exc.__cause__
        if cause is None or not all(_usable(case, app) for app in {id(app.inputs): app for app in apps}.values()):
            raise
        labels = ", ".join(app.label for app in apps)
        raise case.fail(
            check,
            f"{len(apps)} applications in one pass ({labels}) raised {type(cause).__name__}: {cause}; each "
            f"application alone runs. {STATE_HINT}",
        ) from cause
    if whole.changed:
        raise case.fail(
            check,
            f"{whole.changed} was written into later in the same backward pass (by another backward, or by "
            "the gradient accumulation): gradients are accumulated by reference, so no array that backward "
            "receives or returns may be written into afterwards; return a new array (or the upstream "
            "gradient itself) on every call",
        )
    parts = [
        guarded(
            case,
            check,
            lambda k=k: _apply(case, [(k, apps[k])], rng_states=[whole.rng_states[k]]),  # type: ignore[misc]
        )
        for k in range(len(apps))
    ]
    return whole, parts


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _at(array: np.ndarray, index: tuple[int, ...]) -> str:
    return f"{float(array[index]):.6g}"


@requires(check_gradient_structure)
def check_fan_out(case: OperationCase) -> None:
    """The same input Variables fed to three applications in one pass receive the sum of the
    three gradients, each computed alone (parameters likewise): no contribution lost or
    overwritten, at any shape including ``()``; and no array backward was handed or returned
    is written into afterwards."""
    check = check_fan_out
    sample = case.require_sample()
    arrays = sample_arrays(sample)
    slots = [f"input {i}" for i in range(len(arrays))]
    apps = [_Application(arrays, slots, sample.target, f"application {k + 1}") for k in range(FAN_OUT)]
    whole, parts = _run_applications(case, check, apps)
    found = _mismatch(whole, parts)
    if found is None:
        return
    name, got, contributions, index = found
    total = np.sum(contributions, axis=0)
    why = ""
    for k, c in enumerate(contributions):
        for expected, what in ((total - c, "was lost"), (c, "was the only one kept (the others were overwritten)")):
            if np.allclose(got, expected, rtol=1e-7, atol=1e-9):
                # backward runs in reverse, so the last application's contribution arrives first
                why = f": application {k + 1}'s contribution (arriving {_ordinal(len(contributions) - k)}) {what}"
                break
        if why:
            break
    each = ", ".join(_at(c, index) for c in contributions)
    raise case.fail(
        check,
        f"{name} fed to {FAN_OUT} applications: gradient {_at(got, index)} at {list(index)}, but the applications' "
        f"gradients computed alone ({each}) sum to {_at(total, index)}{why}",
    )


def _other_values(arrays: list[np.ndarray]) -> Iterator[tuple[list[np.ndarray], str]]:
    """Inputs of the same shapes holding other values, and how to name them: first negated and
    shifted by one element (other signs in other places; integers only shifted), then only
    shifted, then shifted and doubled, for ops whose inputs must keep their signs."""

    def shifted(a: np.ndarray) -> np.ndarray:
        return np.roll(a.reshape(-1), 1).reshape(a.shape)

    changes: tuple[tuple[Callable[[np.ndarray], np.ndarray], str], ...] = (
        (lambda a: -shifted(a), "other values and signs"),
        (shifted, "values shifted"),
        (lambda a: 2.0 * shifted(a), "values shifted and doubled"),
    )
    for change, what in changes:
        candidate = [change(a) if a.dtype.kind == "f" else shifted(a) for a in arrays]
        if any(not np.array_equal(a, c) for a, c in zip(arrays, candidate)):
            yield candidate, f"same shapes, {what}"


def _same_arguments(a: Sample, b: Sample) -> bool:
    try:
        return bool(list(a.args) == list(b.args) and dict(a.kwargs or {}) == dict(b.kwargs or {}))
    except Exception:  # arguments that do not compare (arrays): treat as different
        return False


def _other_shapes(case: OperationCase, arrays: list[np.ndarray]) -> Iterator[tuple[list[np.ndarray], Any, str]]:
    """Inputs of other shapes for the same op instance: the op's other samples with the same
    constructor arguments, then this sample with its batch doubled (axis 0, new values), then
    with its shapes reversed (as many elements: for ops that fix the size, such as Reshape)."""
    sample = case.require_sample()
    shapes = [a.shape for a in arrays]
    samples = case.samples()
    start = next((i for i, s in enumerate(samples) if s is sample), len(samples))
    for other in samples[start + 1:] + samples[:start]:
        if other is sample or len(other.inputs) != len(arrays) or not _same_arguments(sample, other):
            continue
        candidate = sample_arrays(other)
        if [c.shape for c in candidate] != shapes and all(
            (c.dtype.kind == "f") == (a.dtype.kind == "f") for c, a in zip(candidate, arrays)
        ):
            yield candidate, other.target, f"sample {other.name or 'another sample'!r}"
    if not any(a.ndim for a in arrays):
        return
    target = sample.target
    if isinstance(target, np.ndarray) and target.ndim:
        target = np.concatenate([target, target])
    for values, _ in _other_values(arrays):
        doubled = [np.concatenate([a, v]) if a.ndim else a for a, v in zip(arrays, values)]
        yield doubled, target, f"sample {case.sample_name!r} with its batch doubled"
    reversed_shapes = [a.reshape(a.shape[::-1]) for a in arrays]
    if [a.shape for a in reversed_shapes] != shapes:
        yield reversed_shapes, sample.target, f"sample {case.sample_name!r} with its shapes reversed"


@requires(check_gradient_structure)
def check_reuse_in_one_pass(case: OperationCase) -> None:
    """The op applied three times in one pass, on independent inputs: the sample; the same
    shapes with other values and signs; other shapes (another sample with the same constructor
    arguments, else this one with its batch doubled). Each application's gradients equal those
    of the same application run alone: per-call state (masks, shapes) lives in ctx, not on self."""
    check = check_reuse_in_one_pass
    sample = case.require_sample()
    arrays = sample_arrays(sample)
    n = len(arrays)
    apps = [
        _Application(
            arrays, [f"input {i}" for i in range(n)], sample.target, f"application 1 (sample {case.sample_name!r})"
        )
    ]

    def add(inputs: list[np.ndarray], target: Any, what: str) -> bool:
        k = len(apps) + 1
        app = _Application(
            inputs, [f"input {i} of application {k}" for i in range(n)], target, f"application {k} ({what})"
        )
        if _usable(case, app):
            apps.append(app)
            return True
        return False

    # Other shapes last: each earlier application's backward then meets the last forward's state
    # of another shape, and a buffer kept on self per shape is reused (and overwritten) in between.
    any(add(inputs, sample.target, what) for inputs, what in _other_values(arrays))
    any(add(inputs, target, what) for inputs, target, what in _other_shapes(case, arrays))
    whole, parts = _run_applications(case, check, apps)
    found = _mismatch(whole, parts)
    if found is None:
        return
    name, got, contributions, index = found
    labels = ", ".join(app.label for app in apps)
    owner = next((k for k, app in enumerate(apps) if name in app.slots), None)
    if owner is not None:
        detail = (
            f"{name}: gradient {_at(got, index)} at {list(index)} in one pass with {labels}; "
            f"{_at(contributions[0], index)} when application {owner + 1} runs alone"
        )
    else:
        detail = (
            f"{name}: gradient {_at(got, index)} at {list(index)} in one pass with {labels}; the applications' "
            f"contributions computed alone sum to {_at(np.sum(contributions, axis=0), index)}"
        )
    raise case.fail(check, f"{detail}. {STATE_HINT}")




# -- across passes: after the parameters change (check_after_parameters_change) ------------------
#: How check_after_parameters_change changes the parameters, by how a user changes them.
PARAMETER_CHANGES = (
    ("in place", "in place (as an optimizer's step and Parameter.load do)"),
    ("assigned", "by assigning new arrays (variable.value = ...)"),
)


def _new_values(parameters: Mapping[str, Variable], rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Other values for every parameter, as training might leave them: every element moved by a
    random fraction of its size (at least 0.03); then, for parameters that must keep their signs,
    all of them scaled by 1.5, and by 0.5."""
    values = {name: p.value.copy() for name, p in parameters.items()}
    yield {name: v + rng.standard_normal(v.shape) * 0.3 * (np.abs(v) + 0.1) for name, v in values.items()}
    yield {name: v * 1.5 for name, v in values.items()}
    yield {name: v * 0.5 for name, v in values.items()}


def _fresh_pass(case: OperationCase, values: Mapping[str, np.ndarray], rng_state: Mapping[str, Any]) -> dict[str, Any]:
    """One pass of a fresh op holding ``values`` as its parameters, the generator at ``rng_state``;
    a ContractError unless everything it computes is finite."""
    graph, op = case.build()
    parameters = op.parameters()
    for name, value in values.items():
        parameters[name].value[...] = value
    graph.rng.bit_generator.state = rng_state
    found, _ = pass_results(case, graph, op, case.inputs())
    bad = next(
        (name for name, v in found.items() if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()), None
    )
    if bad is not None:
        raise case.fail(check_after_parameters_change, f"{bad} is not finite")
    return found


@requires(check_gradient_structure)
def check_after_parameters_change(case: OperationCase) -> None:
    """Applied again after its parameters change, the op gives the outputs, loss and gradients
    (every input's and parameter's) of a fresh op holding the new values: first after an update
    in place (as an optimizer's step makes), then after new arrays are assigned. Nothing computed
    from a parameter may be kept from an earlier application (a transposed weight cached on first
    use). An op without float parameters passes."""
    check = check_after_parameters_change
    graph, op = case.build()
    parameters = {name: p for name, p in op.parameters().items() if p.value.dtype.kind == "f"}
    if not parameters:
        return
    guarded(case, check, lambda: pass_results(case, graph, op, case.inputs()))  # the first application
    rng = np.random.default_rng(SEED + 3)
    for how, said in PARAMETER_CHANGES:
        state = graph.rng.bit_generator.state  # (the fresh op draws what this application draws: Dropout's masks)
        tried: list[str] = []
        for values in _new_values(parameters, rng):
            try:
                expected = guarded(case, check, lambda: _fresh_pass(case, values, state))  # noqa: B023 - called at once
                break
            except ContractError as exc:
                tried.append(detail_of(exc))
        else:
            raise case.fail(check, f"no changed parameter values gave a fresh op finite results: {'; '.join(tried)}")
        for name, p in parameters.items():
            if how == "in place":
                p.value[...] = values[name]
            else:
                p.value = values[name].copy()
            p.clear_grad()
        try:
            got = guarded(case, check, lambda: pass_results(case, graph, op, case.inputs())[0])
        except ContractError as exc:
            raise case.fail(check, f"after its parameters changed {said}, applying it again {detail_of(exc)}") from exc
        for name, want in expected.items():
            ok, detail = close(got.get(name), want)
            if not ok:
                changed = ", ".join(f"{op.name}.{p}" for p in parameters)
                raise case.fail(
                    check,
                    f"after its parameters ({changed}) changed {said}, {name} differs from a fresh op's holding the "
                    f"new values, {detail}. The op keeps something computed from a parameter's earlier value: "
                    "compute it from the parameter's value on every call",
                )


# -- across passes: a captured step recorded, then replayed (check_capture) ----------------------
def _captured_step(case: OperationCase) -> tuple[Graph, Operation, Callable[..., Any]]:
    """A fresh op and the step ``check_capture`` captures: clear the gradients, forward, the loss
    against ``target`` (a Loss) or the upstream gradients ``seeds``, backward; it returns the outputs
    (and the loss). Every array its ops receive is an argument: the step makes none itself."""
    graph, op = case.build()

    def step(inputs: list[Variable], target: Any, seeds: list[np.ndarray]) -> Any:
        graph.parameter.clear_grads()
        result = op.forward(*inputs)
        if case.is_loss:
            value = op.loss(target)  # type: ignore[attr-defined]
            graph.backward()
            return (*outputs_of(result), value)
        graph.backward(grads=dict(zip(float_outputs(result), seeds)))
        return outputs_of(result)

    return graph, op, step


def _step_arguments(case: OperationCase, arrays: list[np.ndarray]) -> tuple[Any, list[np.ndarray], list[np.ndarray]]:
    """What the step receives besides its inputs: the target (as the loss reads it: an array), and
    two sets of upstream gradients (one per float output), for the recorded call and the replayed
    one. The outputs' shapes come from a fresh op applied to ``arrays`` in eval mode (nothing recorded)."""
    if case.is_loss:
        target = case.target()
        return (
            (target if isinstance(target, (np.ndarray, Variable)) else as_array(target, f"{case.name} target")),
            [],
            [],
        )
    graph, op = case.build()
    graph.eval()
    outputs = float_outputs(op.forward(*[Variable(a) for a in arrays]))
    recorded, replayed = (list(upstream_gradients(outputs, seed=seed).values()) for seed in (SEED + 1, SEED + 2))
    return None, recorded, replayed


def _bitwise(a: Any, b: Any) -> bool:
    """Bit for bit the same (Variables: value and gradient), by the one comparison captured steps use."""
    return first_difference(a, b, "") is None


@requires(check_gradient_structure)
def check_capture(case: OperationCase) -> None:
    """A captured step of the op (forward, loss, backward), recorded on the sample and replayed
    on a second input of the same shapes with other values (and other upstream gradients), equals
    eager bit for bit: outputs, loss, and every input's and parameter's gradient. The step takes
    its inputs, target and upstream gradients as arguments. An op is safe to replay when its backward
    depends on nothing but ``ctx`` (what forward saved, ``needs_input_grad``) and its parameters,
    and forward keeps nothing on ``self`` (``ctx.inputs`` is empty during a replay)."""
    check = check_capture
    first = sample_arrays(case.require_sample())
    seconds = [values for values, _ in _other_values(first)]
    slots = [f"input {i}" for i in range(len(first))]
    second = next((v for v in seconds if _usable(case, _Application(v, slots, case.target(), "second input"))), first)

    def run() -> str | None:
        target, first_seeds, second_seeds = _step_arguments(case, first)  # (the second input has the same shapes)
        captured_graph, captured_op, captured = _captured_step(case)
        step = captured_graph.capture(captured, check=False)
        step([Variable(a) for a in first], target, first_seeds)  # records (eager)
        got_inputs = [Variable(a) for a in second]
        try:
            got = step(got_inputs, target, second_seeds)  # replays
        except OP_FAULTS as exc:
            return f"the replay raised {type(exc).__name__}: {exc}"
        eager_graph, eager_op, eager = _captured_step(case)
        eager([Variable(a) for a in first], target, first_seeds)
        want_inputs = [Variable(a) for a in second]
        want = eager(want_inputs, target, second_seeds)
        for i, (g, w) in enumerate(zip(got, want)):
            if not _bitwise(g, w):
                return (
                    f"output {i} of the replay differs from eager"
                    if i < len(got) - case.is_loss
                    else "the loss differs"
                )
        for i, (g, w) in enumerate(zip(got_inputs, want_inputs)):
            if not _bitwise(g.peek_grad(), w.peek_grad()):
                return f"the gradient of input {i} differs"
        for name, p in captured_op.parameters().items():
            q = eager_op.parameters()[name]
            if not (_bitwise(p.peek_grad(), q.peek_grad()) and _bitwise(p.value, q.value)):
                return f"parameter {captured_op.name}.{name}'s gradient differs"
        return None

    problem = guarded(case, check, run)
    if problem:
        raise case.fail(
            check,
            f"recorded on the sample and replayed on a second input, {problem}. The op keeps per-call state "
            "outside ctx, or reads something forward did not save (ctx.inputs is empty during a replay: "
            "save what backward needs with ctx.save)",
        )
