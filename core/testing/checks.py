"""The single-application checks: each builds the op afresh and applies it once per graph.

Every check is a named function of an ``OperationCase``; its name (``check.__name__``) names it
in every report. Those that run ``backward`` require ``check_gradient_structure`` (``@requires``),
so a malformed gradient is reported once, by the check named for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..gradcheck import GradcheckReport, gradcheck
from ..graph import Graph
from ..operation import Loss, Operation, Sample
from ..variable import Variable
from .case import (
    ATOL,
    MAX_SAMPLES,
    OP_FAULTS,
    RTOL,
    SEED,
    OperationCase,
    close,
    draw_samples,
    float_outputs,
    gradients,
    guarded,
    outputs_of,
    pass_results,
    prerequisite,
    requires,
    run_pass,
    sample_arrays,
    upstream_gradients,
)

__all__ = [
    "DTYPES",
    "FLOAT32_ATOL",
    "FLOAT32_RTOL",
    "check_accumulates",
    "check_eval_mode",
    "check_float32_matches_float64",
    "check_forward_deterministic",
    "check_forward_dtype_and_finite",
    "check_gradient_inputs",
    "check_gradient_parameters",
    "check_gradient_structure",
    "check_gradient_with_plain_inputs",
    "check_has_samples",
    "check_inputs_not_mutated",
    "check_linear_in_upstream_gradient",
    "check_loss_scalar",
]

#: Every dtype the contract applies ops in: a float64 graph and a float32 graph.
DTYPES = (np.float64, np.float32)
#: float32 results against float64 ones: |a32 - a64| <= FLOAT32_ATOL + FLOAT32_RTOL (|a64| + max |a64|).
#: The first-party and contrib ops' rounding stays below 7e-7 of that scale (about 6 float32 ulps); float16
#: arithmetic (5e-4) or a wrong float32 path is far above it.
FLOAT32_ATOL, FLOAT32_RTOL = 1e-6, 1e-5


def check_has_samples(case: OperationCase) -> None:
    """The op yields at least one ``tg.Sample`` from ``samples(cls, rng)``, and no more than
    ``MAX_SAMPLES``; a Loss's samples have targets."""
    check = check_has_samples
    cls = case.info.cls
    try:
        samples = draw_samples(cls)
    except OP_FAULTS as exc:
        raise case.fail(check, f"samples() raised {type(exc).__name__}: {exc}") from exc
    if len(samples) > MAX_SAMPLES:
        raise case.fail(
            check, f"samples() yielded more than {MAX_SAMPLES} samples (an endless generator?); yield a few"
        )
    if not samples:
        raise case.fail(
            check,
            f"{cls.__name__} has no samples, so nothing can be checked. Add\n"
            "      @classmethod\n"
            "      def samples(cls, rng):\n"
            "          yield tg.Sample(args=[...constructor args...], inputs=[rng.standard_normal((4, 3))])",
        )
    bad = [s for s in samples if not isinstance(s, Sample)]
    if bad:
        raise case.fail(check, f"samples() must yield tg.Sample objects, got {bad[0]!r}")
    if issubclass(cls, Loss) and any(s.target is None for s in samples):
        raise case.fail(check, "a Loss needs a target in every sample (Sample(target=...))")


@prerequisite
def check_gradient_structure(case: OperationCase) -> None:
    """``backward`` returns one gradient per input, each of its input's shape and float dtype,
    and None for integer inputs. Checked first: the checks that run backward require it, and
    are skipped when it fails (the values are other checks' business: NaN passes here)."""
    check = check_gradient_structure
    graph, op = case.build()
    inputs = case.inputs()
    result = guarded(case, check, lambda: op.forward(*inputs), numeric=False)
    ctx = next(c for c in reversed(graph.forward_ops) if c.op is op)
    if case.is_loss:
        guarded(case, check, lambda: op.loss(case.target()), numeric=False)  # type: ignore[attr-defined]
        upstream: Any = 1.0
    else:
        outs = outputs_of(result)
        seeds = upstream_gradients(outs)
        # as the tape passes it: a tuple for an op returning a tuple (even of one output)
        upstream = tuple(seeds[o] for o in outs) if isinstance(result, tuple) else seeds[outs[0]]
    raw = guarded(case, check, lambda: op.backward(ctx, upstream), numeric=False)
    graph.clear()
    grads = raw if isinstance(raw, tuple) else (raw,)
    if len(grads) != len(inputs):
        raise case.fail(check, f"backward returned {len(grads)} gradient(s) for {len(inputs)} input(s)")
    for i, (g, x) in enumerate(zip(grads, inputs)):
        if x.value.dtype.kind != "f":
            if g is not None:
                raise case.fail(
                    check, f"input {i} is an integer array (dtype {x.value.dtype}); its gradient must be None"
                )
            continue
        if g is None:
            continue
        shape = np.shape(g)
        if shape != x.shape:
            raise case.fail(check, f"gradient of input {i} has shape {shape}, the input has shape {x.shape}")
        if np.asarray(g).dtype.kind != "f":
            raise case.fail(check, f"gradient of input {i} has dtype {np.asarray(g).dtype}, expected a float dtype")


@requires(check_gradient_structure)
def check_forward_dtype_and_finite(case: OperationCase) -> None:
    """float64 in gives float64 out; in a float32 graph, float32 in gives float32 outputs and
    gradients; finite inputs give finite outputs, losses and gradients, with no overflow."""
    check = check_forward_dtype_and_finite
    for dtype in DTYPES:
        graph, op = case.build(dtype)
        inputs = case.inputs(dtype)
        result = guarded(case, check, lambda: run_pass(case, graph, op, inputs))  # noqa: B023 - called at once
        for i, out in enumerate(outputs_of(result)):
            if not isinstance(out, Variable):
                raise case.fail(check, f"output {i} is {type(out).__name__}, expected a Variable")
            if out.value.dtype.kind == "f" and out.value.dtype != np.dtype(dtype):
                raise case.fail(
                    check,
                    f"output {i} has dtype {out.value.dtype} for {np.dtype(dtype)} inputs in a {np.dtype(dtype)} graph",
                )
            if out.value.dtype.kind in "fc" and not np.isfinite(out.value).all():
                bad = np.argwhere(~np.isfinite(out.value))[0]
                raise case.fail(
                    check,
                    f"output {i} is {out.value[tuple(bad)]} at {bad.tolist()} for finite inputs ({np.dtype(dtype)})",
                )
        for name, grad in gradients(op, inputs).items():
            if grad is None:
                continue
            if grad.dtype != np.dtype(dtype):
                raise case.fail(check, f"gradient of {name} has dtype {grad.dtype} in a {np.dtype(dtype)} graph")
            if not np.isfinite(grad).all():
                raise case.fail(check, f"gradient of {name} is not finite ({np.dtype(dtype)})")


def check_forward_deterministic(case: OperationCase) -> None:
    """Two forward passes on graphs with the same seed give identical outputs (and losses)."""
    check = check_forward_deterministic
    results = []
    for _ in range(2):
        graph, op = case.build()

        def forward(op: Operation = op) -> Any:
            out = op.forward(*case.inputs())
            loss = op.loss(case.target()) if case.is_loss else None  # type: ignore[attr-defined]
            return [o.value for o in outputs_of(out)], loss

        results.append(guarded(case, check, forward))
    (first, loss1), (second, loss2) = results
    for i, (a, b) in enumerate(zip(first, second)):
        if not np.array_equal(a, b, equal_nan=True):
            raise case.fail(check, f"output {i} differs between two runs with the same seed")
    if loss1 != loss2 and not (loss1 != loss1 and loss2 != loss2):
        raise case.fail(check, f"loss differs between two runs with the same seed: {loss1} vs {loss2}")


def _changed(before: np.ndarray, after: np.ndarray) -> str:
    """Where ``after`` first differs from ``before``, with both values."""
    same = before == after
    if before.dtype.kind in "fc":
        same |= np.isnan(before) & np.isnan(after)
    differs = ~same
    index = tuple(int(i) for i in np.argwhere(differs)[0]) if before.ndim else ()
    if before.dtype.kind in "fc":
        return f"at {list(index)}: {after[index]:.7g} (was {before[index]:.7g})"
    return f"at {list(index)}: {after[index]} (was {before[index]})"


@requires(check_gradient_structure)
def check_inputs_not_mutated(case: OperationCase) -> None:
    """In every dtype checked (float64, float32), neither forward nor backward writes into the
    input arrays or the upstream gradient (in a float32 graph a float32 input reaches forward
    as the caller's own array: no conversion copies it first)."""
    check = check_inputs_not_mutated
    for dtype in DTYPES:
        graph, op = case.build(dtype)
        inputs = case.inputs(dtype)
        before = [v.value.copy() for v in inputs]
        what = f"({np.dtype(dtype)} graph, {np.dtype(dtype)} inputs)"
        result = guarded(case, check, lambda: op.forward(*inputs))  # noqa: B023 - called at once
        for i, (v, b) in enumerate(zip(inputs, before)):
            if not np.array_equal(v.value, b, equal_nan=True):
                raise case.fail(check, f"forward changed input {i} {what} {_changed(b, v.value)}")
        if case.is_loss:

            def loss_backward(op: Operation = op, graph: Graph = graph) -> None:
                op.loss(case.target())  # type: ignore[attr-defined]
                graph.backward()

            guarded(case, check, loss_backward)
        else:
            seeds = upstream_gradients(float_outputs(result))
            seed_copies = {k: s.copy() for k, s in seeds.items()}
            guarded(case, check, lambda: graph.backward(grads=seeds))  # noqa: B023 - called at once
            for k, s in seeds.items():
                if not np.array_equal(s, seed_copies[k]):
                    raise case.fail(
                        check,
                        f"backward wrote into the upstream gradient array {what} {_changed(seed_copies[k], s)}",
                    )
        for i, (v, b) in enumerate(zip(inputs, before)):
            if not np.array_equal(v.value, b, equal_nan=True):
                raise case.fail(check, f"backward changed input {i} {what} {_changed(b, v.value)}")


def _report_failures(case: OperationCase, check: Any, report: GradcheckReport, kind: str) -> None:
    bad = [e for e in report.failures if e.kind == kind]
    if bad:
        raise case.fail(check, "\n  ".join(e.describe() for e in bad))


@requires(check_gradient_structure)
def check_gradient_inputs(case: OperationCase) -> None:
    """Every float input's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = guarded(case, check_gradient_inputs, case.gradcheck_report)
    _report_failures(case, check_gradient_inputs, report, "input")


@requires(check_gradient_structure)
def check_gradient_parameters(case: OperationCase) -> None:
    """Every parameter's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = guarded(case, check_gradient_parameters, case.gradcheck_report)
    _report_failures(case, check_gradient_parameters, report, "parameter")


def _gradcheck_with_plain_inputs(
    case: OperationCase, arrays: Sequence[np.ndarray], variable: int | None
) -> GradcheckReport:
    """Central differences for every parameter of a fresh op (and for input ``variable``, the
    one input passed as a Variable), every other input passed as a plain array."""
    graph, op = case.build()
    parameters = {f"{op.name}.{name}": p for name, p in op.parameters().items()}

    def apply(*given: Variable) -> Any:
        inputs = [given[0] if i == variable else a for i, a in enumerate(arrays)]
        result = op.forward(*inputs)
        return op.loss(case.target()) if case.is_loss else result  # type: ignore[attr-defined]

    chosen = [] if variable is None else [arrays[variable]]
    report = gradcheck(
        apply, chosen, graph=graph, parameters=parameters, atol=ATOL, rtol=RTOL, mode="fast" if case.fast else "auto"
    )
    if variable is not None:  # gradcheck numbers the inputs it was given: this one is input `variable`
        report.entries = [
            dataclasses.replace(e, name=f"input {variable}") if e.kind == "input" else e for e in report.entries
        ]
    return report


@requires(check_gradient_structure)
def check_gradient_with_plain_inputs(case: OperationCase) -> None:
    """Applied to plain arrays (not Variables, so ``ctx.needs_input_grad`` is all False, as when
    a Trainer feeds data), the op's backward runs and every parameter's gradient matches central
    differences; with several float inputs, each one alone passed as a Variable (the others
    plain) gets its gradient, and every parameter its own, as well."""
    check = check_gradient_with_plain_inputs
    arrays = sample_arrays(case.require_sample())
    floats = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    # (with one float input, that input as a Variable is what check_gradient_inputs checks)
    for variable in [None, *(floats if len(floats) > 1 else [])]:
        copies = [a.copy() for a in arrays]
        report = guarded(case, check, lambda: _gradcheck_with_plain_inputs(case, copies, variable))  # noqa: B023
        if report.failures:
            needs = tuple(i == variable for i in range(len(arrays)))
            how = (
                "every input a plain array"
                if variable is None
                else f"input {variable} a Variable, the others plain arrays"
            )
            lines = "\n  ".join(e.describe() for e in report.failures)
            raise case.fail(
                check,
                f"with {how} (ctx.needs_input_grad {needs}):\n  {lines}\n"
                "  backward must give every parameter its gradient, and each input that needs one its own, "
                "whatever ctx.needs_input_grad says of the others (it only says which input gradients may be None)",
            )


def _float32_and_float64(case: OperationCase) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The op applied in a float32 graph, and in a float64 graph on the same values (the float32
    inputs, parameters and upstream gradients, widened): outputs, loss and gradients, by name; and
    how they were computed. An op whose random draws depend on the dtype (its generator ends apart)
    cannot be compared so: then only its eval-mode outputs (and loss) are."""
    narrow_graph, narrow_op = case.build(np.float32)
    wide_graph, wide_op = case.build(np.float64)
    narrow_inputs = case.inputs(np.float32)
    wide_inputs = [
        Variable(v.value.astype(np.float64) if v.dtype.kind == "f" else v.value.copy(), name=v.name)
        for v in narrow_inputs
    ]
    wide_parameters = wide_op.parameters()
    for name, p in narrow_op.parameters().items():
        wide_parameters[name].value[...] = p.value
    wide_graph.rng.bit_generator.state = narrow_graph.rng.bit_generator.state
    narrow, seeds = pass_results(case, narrow_graph, narrow_op, narrow_inputs)
    wide, _ = pass_results(case, wide_graph, wide_op, wide_inputs, seeds)
    if narrow_graph.rng.bit_generator.state == wide_graph.rng.bit_generator.state:
        return narrow, wide, "in train mode, with gradients"
    found = []
    for graph, op, inputs in ((narrow_graph, narrow_op, narrow_inputs), (wide_graph, wide_op, wide_inputs)):
        graph.eval()
        out = op.forward(*inputs)
        values: dict[str, Any] = {f"output {i}": o.value for i, o in enumerate(outputs_of(out))}
        if case.is_loss:
            values["the loss"] = op.loss(case.target())  # type: ignore[attr-defined]
        found.append(values)
    return found[0], found[1], "in eval mode only (its random draws depend on the dtype)"


@requires(check_gradient_structure)
def check_float32_matches_float64(case: OperationCase) -> None:
    """In a float32 graph the outputs, the loss and every input's and parameter's gradient match
    those of a float64 graph on the same values (the float32 inputs and parameters, widened) to
    float32's precision: ``|a32 - a64| <= 1e-6 + 1e-5 (|a64| + max |a64|)`` (the max allows for
    elements computed by cancellation, which carry the rounding of the larger terms). An op whose
    random draws depend on the dtype is compared on its eval-mode outputs only."""
    check = check_float32_matches_float64
    narrow, wide, how = guarded(case, check, lambda: _float32_and_float64(case))
    for name, expected in wide.items():
        got = narrow.get(name)
        if got is None:
            raise case.fail(check, f"{name} is None in float32 but not in float64")
        got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        if got.shape != expected.shape:
            raise case.fail(check, f"{name} has shape {got.shape} in float32 and {expected.shape} in float64")
        if expected.size == 0:
            continue
        scale = float(np.max(np.abs(expected)))
        tol = FLOAT32_ATOL + FLOAT32_RTOL * (np.abs(expected) + scale)
        err = np.abs(got - expected)
        if not (err <= tol).all():
            index = tuple(int(i) for i in np.unravel_index(int(np.argmax(err - tol)), got.shape))
            raise case.fail(
                check,
                f"{name} at {list(index)}: {got[index]:.7g} in float32 vs {expected[index]:.7g} in float64 on the same "
                f"values, {how} (error {err[index]:.3g}; tolerance {tol[index]:.3g} = {FLOAT32_ATOL:g} + "
                f"{FLOAT32_RTOL:g} (|float64| + max |float64| {scale:.3g})): the float32 computation is wrong, "
                "not merely rounded",
            )


@requires(check_gradient_structure)
def check_accumulates(case: OperationCase) -> None:
    """Gradients already in inputs and parameters are added to, never overwritten."""
    check = check_accumulates
    clean_graph, clean_op = case.build()
    clean_inputs = case.inputs()
    guarded(case, check, lambda: run_pass(case, clean_graph, clean_op, clean_inputs))
    expected_only = gradients(clean_op, clean_inputs)

    graph, op = case.build()
    inputs = case.inputs()
    rng = np.random.default_rng(SEED + 2)
    prefilled: dict[str, np.ndarray] = {}
    variables = {v.name or "": v for v in inputs}
    variables.update({f"{op.name}.{k}": p for k, p in op.parameters().items()})
    for name, v in variables.items():
        if v.value.dtype.kind == "f":
            prefilled[name] = rng.standard_normal(v.shape)
            v.grad = prefilled[name]
    guarded(case, check, lambda: run_pass(case, graph, op, inputs))
    got = gradients(op, inputs)
    for name, start in prefilled.items():
        only = expected_only.get(name)
        expected = start if only is None else start + only
        ok, detail = close(got[name], expected)
        if not ok:
            overwritten = only is not None and close(got[name], only)[0]
            why = " (the pre-filled gradient was overwritten, not added to)" if overwritten else ""
            raise case.fail(check, f"{name}: gradient {detail}{why}")


@requires(check_gradient_structure)
def check_linear_in_upstream_gradient(case: OperationCase) -> None:
    """A zero upstream gradient gives zero gradients; doubling it doubles every gradient."""
    check = check_linear_in_upstream_gradient
    runs = {}
    for scale in (0.0, 1.0, 2.0):
        graph, op = case.build()
        inputs = case.inputs()
        guarded(case, check, lambda: run_pass(case, graph, op, inputs, scale))  # noqa: B023 - called at once
        runs[scale] = gradients(op, inputs)
    for name, zero in runs[0.0].items():
        if zero is not None and np.any(zero != 0):
            raise case.fail(
                check, f"{name}: a zero upstream gradient gave a non-zero gradient (max |g| {np.abs(zero).max():.3g})"
            )
        one, two = runs[1.0][name], runs[2.0][name]
        if one is None:
            continue
        ok, detail = close(two, 2.0 * one)
        if not ok:
            raise case.fail(check, f"{name}: doubling the upstream gradient did not double the gradient: {detail}")


def check_eval_mode(case: OperationCase) -> None:
    """In eval mode nothing is recorded on the tape, backward has nothing to run, and the
    output (and loss) equals train mode unless the op declares ``differs_in_eval``."""
    check = check_eval_mode
    train_graph, train_op = case.build()
    train_out = guarded(case, check, lambda: train_op.forward(*case.inputs()))
    train_loss = (
        guarded(case, check, lambda: train_op.loss(case.target()))  # type: ignore[attr-defined]
        if case.is_loss
        else None
    )
    graph, op = case.build()
    graph.eval()
    out = guarded(case, check, lambda: op.forward(*case.inputs()))
    loss = guarded(case, check, lambda: op.loss(case.target())) if case.is_loss else None  # type: ignore[attr-defined]
    if graph.forward_ops:
        raise case.fail(check, f"eval mode recorded {len(graph.forward_ops)} tape entries")
    if graph.tape.losses:
        raise case.fail(check, "a loss computed in eval mode was queued for backward")
    if case.info.cls.differs_in_eval:
        return
    for i, (a, b) in enumerate(zip(outputs_of(out), outputs_of(train_out))):
        if not np.array_equal(a.value, b.value, equal_nan=True):
            raise case.fail(
                check, f"output {i} differs between eval and train mode (set differs_in_eval = True if intended)"
            )
    if case.is_loss and not _same_loss(loss, train_loss):
        raise case.fail(check, f"loss differs between eval ({loss}) and train ({train_loss}) mode")


def _same_loss(a: Any, b: Any) -> bool:
    return bool(a == b or (math.isnan(a) and math.isnan(b)))


@requires(check_gradient_structure)
def check_loss_scalar(case: OperationCase) -> None:
    """A loss returns a finite Python float, and its gradient with respect to every float
    input matches central differences."""
    check = check_loss_scalar
    graph, op = case.build()
    value = guarded(
        case, check, lambda: (op.forward(*case.inputs()), op.loss(case.target()))[1]  # type: ignore[attr-defined]
    )
    if not isinstance(value, float) or not math.isfinite(value):
        raise case.fail(check, f"loss returned {value!r}, expected a finite float")
    report = guarded(case, check, case.gradcheck_report)
    _report_failures(case, check, report, "input")
