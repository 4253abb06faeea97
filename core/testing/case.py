"""The case (one op on one of its samples) and the building blocks every check uses.

An ``OperationCase`` builds fresh graphs holding the op, hands out fresh copies of the sample's
inputs, and words failures: ``case.fail(check, detail)`` is a ``ContractError`` naming the op,
its plugin, the sample and the check, with a one-line reproducer. The helpers below run one
application (forward, loss, backward) and compare results; ``requires`` and ``prerequisite``
say which check must pass before another can run.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ContractError, ContractSkip
from ..gradcheck import GradcheckReport, gradcheck
from ..graph import Graph
from ..operation import Loss, Operation, Sample
from ..registry import OperationInfo, Registry
from ..variable import Variable

__all__ = [
    "ATOL",
    "Check",
    "MAX_SAMPLES",
    "OP_FAULTS",
    "OperationCase",
    "RTOL",
    "SEED",
    "close",
    "detail_of",
    "draw_samples",
    "float_outputs",
    "gradients",
    "guarded",
    "outputs_of",
    "pass_results",
    "prerequisite",
    "requires",
    "run_pass",
    "sample_arrays",
    "upstream_gradients",
    "usable_samples",
]

SEED = 0
#: The tolerance of every gradient against central differences (float64): |a - n| <= ATOL + RTOL |n|.
ATOL, RTOL = 1e-5, 1e-3
#: More samples than this fail check_has_samples (an endless ``samples()`` must not hang a run).
MAX_SAMPLES = 100
#: What an op's code may raise that fails a check rather than ending the run: ``sys.exit()`` in an
#: op's ``samples``, constructor, ``forward`` or ``backward`` is the op's fault, reported as such.
OP_FAULTS = (Exception, SystemExit)

#: A check: a named function of a case that returns None or raises ContractError (its name names it).
Check = Callable[["OperationCase"], None]


def _name(check: Callable[..., Any] | str) -> str:
    return check if isinstance(check, str) else check.__name__


@dataclass
class OperationCase:
    """One operation on one of its samples (``sample`` is None for an op without samples).

    ``op_samples`` is every sample the op yields, when the caller drew them already
    (``collect_cases`` does, once per op); ``fast`` makes gradient checks use random projections.
    """

    info: OperationInfo
    sample: Sample | None
    index: int = 0
    fast: bool = False
    op_samples: list[Sample] | None = field(default=None, repr=False)
    _report: GradcheckReport | None = field(default=None, repr=False)
    _verdicts: dict[str, BaseException | None] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def sample_name(self) -> str:
        if self.sample is None:
            return "no samples"
        return self.sample.name or f"sample{self.index}"

    @property
    def id(self) -> str:
        return self.name if self.sample is None else f"{self.name}[{self.sample_name}]"

    @property
    def is_loss(self) -> bool:
        return issubclass(self.info.cls, Loss)

    def __str__(self) -> str:
        return self.id

    # -- building blocks used by the checks --------------------------------------------
    def require_sample(self) -> Sample:
        """The case's sample; a ContractError when the op has none (nothing can be checked)."""
        if self.sample is None:
            raise ContractError(
                f"{self.name} (plugin {self.info.plugin!r}) yields no samples, so nothing can be checked: "
                "add samples(cls, rng) yielding tg.Sample objects"
            )
        return self.sample

    def build(self, dtype: Any = np.float64, seed: int = SEED) -> tuple[Graph, Operation]:
        """A fresh graph (own empty registry) holding the op, built with the sample's arguments."""
        sample = self.require_sample()
        graph = Graph(f"contract:{self.name}", seed=seed, dtype=dtype, registry=Registry(entry_points=False))
        op = graph.get_operation(self.info.cls, list(sample.args), **(sample.kwargs or {}))
        return graph, op

    def inputs(self, dtype: Any = np.float64, scale: float = 1.0) -> list[Variable]:
        """Fresh Variables holding the sample's inputs (floats cast to ``dtype``)."""
        return [
            Variable(a, name=f"input {i}") for i, a in enumerate(sample_arrays(self.require_sample(), dtype, scale))
        ]

    def samples(self) -> list[Sample]:
        """Every sample the op yields (the case's own among them), drawn once per case."""
        if self.op_samples is None:
            self.op_samples = [s for s in usable_samples(self.info.cls) if isinstance(s, Sample)]
        return self.op_samples

    def verdict(self, check: Check) -> BaseException | None:
        """Run ``check`` on this case once and keep its verdict: None, or what it raised."""
        name = check.__name__
        if name not in self._verdicts:
            try:
                check(self)
            except OP_FAULTS as exc:
                self._verdicts[name] = exc
            else:
                self._verdicts[name] = None
        return self._verdicts[name]

    def target(self) -> Any:
        return self.require_sample().target

    def message(self, check: Callable[..., Any] | str, detail: str) -> str:
        """The failure text of ``check`` (a check function, or its name) on this case."""
        dist = f", {self.info.distribution}=={self.info.version}" if self.info.distribution else ""
        return (
            f"{self.name} (plugin {self.info.plugin!r}{dist}) [sample {self.sample_name!r}] {_name(check)} failed:\n"
            f"  {detail}\n"
            f"  reproduce: {self.reproducer}"
        )

    @property
    def reproducer(self) -> str:
        if self.info.plugin == "unregistered":
            return f"check_operation({self.name}) (register it to run `tapegrad check {self.name}`)"
        return f"tapegrad check {self.name} --plugin {self.info.plugin}"

    def fail(self, check: Callable[..., Any] | str, detail: str) -> ContractError:
        """The ContractError ``check`` raises on this case (raise it)."""
        return ContractError(self.message(check, detail))

    def gradcheck_report(self) -> GradcheckReport:
        """Central differences for every float input and parameter (cached per case)."""
        if self._report is None:
            graph, op = self.build()
            self._report = gradcheck(
                op, self.inputs(), target=self.target(), atol=ATOL, rtol=RTOL, mode="fast" if self.fast else "auto"
            )
        return self._report


# -- one application: inputs, forward, loss, backward -------------------------------------------
def sample_arrays(sample: Sample, dtype: Any = np.float64, scale: float = 1.0) -> list[np.ndarray]:
    """Copies of a sample's inputs; floats scaled and cast to ``dtype`` (shape ``()`` included)."""
    out = []
    for x in sample.inputs:
        array = np.array(x.value if isinstance(x, Variable) else x)
        if array.dtype.kind == "f":
            array = np.asarray(array * scale, dtype=dtype)
        out.append(array)
    return out


def outputs_of(result: Any) -> tuple[Variable, ...]:
    """What ``forward`` returned, as a tuple of its output Variables."""
    return result if isinstance(result, tuple) else (result,)


def float_outputs(result: Any) -> list[Variable]:
    """The outputs a gradient can flow into."""
    return [o for o in outputs_of(result) if o.dtype.kind == "f"]  # (its dtype: a captured step may read that)


def upstream_gradients(
    outputs: Iterable[Variable], scale: float = 1.0, seed: int = SEED + 1
) -> dict[Variable, np.ndarray]:
    """Upstream gradients for ``outputs``: arrays (never numpy scalars, so shape ``()`` is
    passed by reference like any other) of each output's shape and dtype."""
    rng = np.random.default_rng(seed)
    return {o: np.asarray(rng.standard_normal(o.shape) * scale, dtype=o.dtype) for o in outputs}


def run_pass(case: OperationCase, graph: Graph, op: Operation, inputs: list[Any], scale: float = 1.0) -> Any:
    """Forward, (loss), backward with a fixed upstream gradient times ``scale``; the outputs."""
    result = op.forward(*inputs)
    if case.is_loss:
        op.loss(case.target())  # type: ignore[attr-defined]
        graph.backward(loss_grad=scale)
    else:
        graph.backward(grads=upstream_gradients(float_outputs(result), scale))
    return result


def pass_results(
    case: OperationCase, graph: Graph, op: Operation, inputs: list[Variable], seeds: Sequence[np.ndarray] | None = None
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Forward, (loss), backward of ``op`` on ``inputs``: every output, the loss and every input's and
    parameter's gradient, by name (``output 0``, ``the loss``, ``the gradient of input 0``); and the
    upstream gradients used, ``seeds`` (cast to each float output's dtype) or drawn when None."""
    out = op.forward(*inputs)
    found: dict[str, Any] = {f"output {i}": o.value for i, o in enumerate(outputs_of(out))}
    used: list[np.ndarray] = []
    if case.is_loss:
        found["the loss"] = op.loss(case.target())  # type: ignore[attr-defined]
        graph.backward()
    else:
        outputs = float_outputs(out)
        used = list(upstream_gradients(outputs).values()) if seeds is None else list(seeds)
        graph.backward(grads={o: np.asarray(s, dtype=o.dtype) for o, s in zip(outputs, used)})
    found.update((f"the gradient of {name}", g) for name, g in gradients(op, inputs).items() if g is not None)
    return found, used


def gradients(op: Operation, inputs: list[Variable]) -> dict[str, np.ndarray | None]:
    """Every input's and parameter's gradient after a pass, by name (``input 0``, ``affine_0.W``)."""
    grads: dict[str, np.ndarray | None] = {v.name or f"input {i}": v.grad for i, v in enumerate(inputs)}
    for name, p in op.parameters().items():
        grads[f"{op.name}.{name}"] = p.grad
    return grads


def guarded(case: OperationCase, check: Callable[..., Any] | str, func: Callable[[], Any], numeric: bool = True) -> Any:
    """Run ``func`` with numpy overflow/invalid raising (unless ``numeric`` is False: then such
    values pass silently, for checks about something else); turn any error into ``check``'s
    ContractError."""
    errors = np.errstate(over="raise", invalid="raise", divide="raise") if numeric else np.errstate(all="ignore")
    try:
        with errors, warnings.catch_warnings():
            warnings.simplefilter("error" if numeric else "ignore", RuntimeWarning)
            return func()
    except ContractError:
        raise
    except OP_FAULTS as exc:
        raise case.fail(check, f"raised {type(exc).__name__}: {exc}") from exc


def close(a: np.ndarray | None, b: np.ndarray | None, atol: float = 1e-9, rtol: float = 1e-7) -> tuple[bool, str]:
    """Does ``a`` equal ``b`` up to rounding (``|a - b| <= atol + rtol |b|``)? And if not, the worst element."""
    if a is None or b is None:
        return a is None and b is None, f"{a!r} vs {b!r}"
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    err = np.abs(a - b)
    tol = atol + rtol * np.abs(b)
    if (err <= tol).all():
        return True, ""
    worst = np.unravel_index(int(np.argmax(err - tol)), a.shape) if a.size else ()
    index = tuple(int(i) for i in worst)
    return False, f"at {list(index)}: {a[index]:.6g} vs expected {b[index]:.6g} (atol {atol:g}, rtol {rtol:g})"


# -- the op's samples -----------------------------------------------------------------------
def draw_samples(cls: type[Operation]) -> list[Any]:
    """What ``cls.samples(rng)`` yields (seeded), at most ``MAX_SAMPLES + 1`` of them."""
    return list(itertools.islice(cls.samples(np.random.default_rng(SEED)), MAX_SAMPLES + 1))


def usable_samples(cls: type[Operation]) -> list[Any]:
    """What ``cls.samples(rng)`` yields; nothing when it raises or yields more than ``MAX_SAMPLES``
    (check_has_samples reports both)."""
    try:
        drawn = draw_samples(cls)
    except OP_FAULTS:
        return []
    return drawn if len(drawn) <= MAX_SAMPLES else []


# -- dependencies between checks -----------------------------------------------------------
def prerequisite(check: Check) -> Check:
    """Mark a check that others ``@requires``: it runs once per case (however many checks
    need it, in whatever order) and its verdict is kept on the case."""

    @functools.wraps(check)
    def once(case: OperationCase) -> None:
        error = case.verdict(check)
        if error is not None:
            raise error

    return once


def requires(*needed: Check) -> Callable[[Check], Check]:
    """Make a check run only after every check in ``needed`` passed on the same case.

    Otherwise it raises ``ContractSkip`` naming the failed one, so one fault is reported once,
    by the check that names it. The needed checks are ``@prerequisite`` (run once per case);
    the decorated check lists them in ``.requires``.
    """

    def decorate(check: Check) -> Check:
        @functools.wraps(check)
        def guarded(case: OperationCase) -> None:
            for other in needed:
                try:
                    other(case)
                except OP_FAULTS as exc:
                    raise ContractSkip(
                        _skip_reason(case, check.__name__, other.__name__, exc), other.__name__, exc
                    ) from None
            check(case)

        guarded.requires = needed  # type: ignore[attr-defined]
        return guarded

    return decorate


def _skip_reason(case: OperationCase, check: str, failed: str, error: BaseException) -> str:
    return f"{case.id}: {check} cannot run because {failed} failed ({detail_of(error)})"


def detail_of(error: BaseException) -> str:
    """What ``error`` says in one line: a ContractError's first detail line (without the op, the
    check and the reproducer around it), or the first line of any other error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # A ContractError reads "<op> ... failed:", the detail, "reproduce: ..."; keep the first detail line.
    return (
        lines[1]
        if len(lines) > 1 and isinstance(error, ContractError)
        else (lines[0] if lines else type(error).__name__)
    )
