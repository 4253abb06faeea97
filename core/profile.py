"""``tg.profile(graph)``: where the time of a step goes, per op class and per op instance.

``with tg.profile(graph) as prof:`` times, while the block runs, each op's own code (its
``forward``, ``loss`` and ``backward``), counts its applications, and times every replayable
call (an optimizer's ``step`` and ``zero_grad``, ``Parameter.clear_grads``, clipping, schedulers).
It observes the kernel's events (``tapegrad.events``), so it covers eager steps and captured ones
alike: while an observer is subscribed, a captured step replays the variant of its program whose
calls go through the hook. The block's wall time is the step total, shared by the ops' own code, the optimizer, the
profiler's own timers (their cost per timed call is measured on entering the block) and the
framework: the rest, its work around the ops (the wrappers, the tape, routing gradients, the
replay's glue) together with the Python of the loop itself. ``prof.table()`` is the sorted
table as text, ``prof.to_dict()`` the numbers.

Times are exclusive: an op whose code applies another op is charged without that op's time. One
profiler runs at a time; with profiling off, each event costs the kernel a single test of
``events.observer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import events
from .errors import ArgumentError, GraphError, InputTypeError

if TYPE_CHECKING:
    from .graph import Graph
    from .operation import Operation

__all__ = ["Profile", "profile"]


class OpStats:
    """One op instance's applications and own seconds, per stage."""

    __slots__ = ("backward", "backward_calls", "calls", "forward", "loss", "loss_calls", "op", "replayed")

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.calls = self.loss_calls = self.backward_calls = self.replayed = 0
        self.forward = self.loss = self.backward = 0.0

    def add(self, other: OpStats) -> None:
        for name in ("calls", "loss_calls", "backward_calls", "replayed", "forward", "loss", "backward"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def seconds(self) -> float:
        return self.forward + self.loss + self.backward


def profile(graph: Any = None) -> Profile:
    """A profiler for the ops of ``graph`` (a Graph, or anything with a ``.graph``: a model, a
    Trainer, a captured step); None profiles the ops of every graph. Use it as a context manager."""
    return Profile(graph)


_running: list[Profile] = []  # the profiler running now, if any


class Profile(events.Observer):
    """Timings collected while ``with`` blocks of this profiler run (see the module docstring).

    ``seconds`` is the blocks' wall time so far; ``ops`` maps each op instance (by identity) to its
    ``OpStats``; ``calls`` maps ``"SGD.step"`` and the like to ``[count, seconds]``.
    """

    def __init__(self, graph: Any = None) -> None:
        from .graph import graph_of

        found = None if graph is None else graph_of(graph)
        if graph is not None and found is None:
            raise InputTypeError(
                f"tapegrad.profile: expected a Graph, a model with a .graph, or None, got {type(graph).__name__}"
            )
        self.graph: Graph | None = found
        self.seconds = 0.0
        self.ops: dict[int, OpStats] = {}
        self.calls: dict[str, list[Any]] = {}
        self._child = 0.0  # seconds of timed code inside the one being timed now (exclusive times)
        self._start: float | None = None
        self.cost = 0.0  # seconds one timed call costs beyond what it charges
        self.replayed_timings = 0  # timed calls a captured step's replay made

    def __enter__(self) -> Profile:
        if _running:
            raise GraphError("tapegrad.profile: another profiler is running; profile one block at a time")
        self.cost = self.calibrate()
        self._child = 0.0
        self._start = perf_counter()
        _running.append(self)
        events.subscribe(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        events.unsubscribe(self)
        if self in _running:
            _running.remove(self)
        if self._start is not None:
            self.seconds += perf_counter() - self._start
        self._start = None

    def calibrate(self, rounds: int = 3, calls: int = 200) -> float:
        """What one timed call costs beyond the time it charges (the least of ``rounds``, measured on a
        scratch profiler: under load it costs more)."""
        scratch, dummy = Profile(self.graph), _Dummy(self.graph)

        def noop(op: Any, ctx: Any) -> None:
            return None

        def charged() -> float:
            return sum(s.seconds for s in scratch.ops.values())

        cost = math.inf
        for _ in range(rounds):
            before, start = charged(), perf_counter()
            for _ in range(calls):
                noop(dummy, None)
            middle = perf_counter()
            for _ in range(calls):
                scratch.run("forward", noop, dummy, (dummy, None), {})
            end = perf_counter()
            cost = min(cost, (end - middle - (middle - start) - (charged() - before)) / calls)
        return max(cost, 0.0)

    # -- what the hooks call ---------------------------------------------------------------------
    # Each timed call reads the clock right around the code it times (what lies between the two
    # readings is charged to that code), and ``begin``/``end`` keep the times exclusive.
    def begin(self) -> float:
        """Start timing one call (then read the clock); returns what ``end`` needs back."""
        child, self._child = self._child, 0.0
        return child

    def _own(self, child: float, start: float, now: float) -> float:
        elapsed = now - start
        own = elapsed - self._child
        self._child = child + elapsed
        return own

    def end(self, op: Operation, stage: str, child: float, start: float, now: float, replayed: bool = False) -> None:
        """Charge ``now - start`` (less the timed calls inside it) to ``op``'s ``stage`` ("forward",
        "loss", "backward"); ``replayed`` when a replay program made the call."""
        own = self._own(child, start, now)
        self.replayed_timings += replayed
        stats = self.ops.get(id(op))
        if stats is None:
            stats = self.ops[id(op)] = OpStats(op)
        if stage == "forward":
            stats.calls += 1
            stats.forward += own
            stats.replayed += replayed
        elif stage == "loss":
            stats.loss_calls += 1
            stats.loss += own
        else:
            stats.backward_calls += 1
            stats.backward += own

    def end_call(
        self, obj: Any, function: Callable[..., Any], child: float, start: float, now: float, replayed: bool = False
    ) -> None:
        """Charge ``now - start`` (less the timed calls inside it) to ``type(obj).function``."""
        own = self._own(child, start, now)
        self.replayed_timings += replayed
        owner = "clip" if isinstance(obj, (list, tuple)) else type(obj).__name__
        entry = self.calls.setdefault(
            f"{owner}.{function.__name__}" if owner != "clip" else function.__name__, [0, 0.0]
        )
        entry[0] += 1
        entry[1] += own

    def covers(self, op: Operation) -> bool:
        return self.graph is None or op.graph is self.graph

    def covers_call(self, obj: Any) -> bool:
        """Whether a replayable call on ``obj`` belongs to the profiled graph: everything does when
        no graph is named; else not another graph's parameter store, nor an optimizer none of whose
        Variables are the graph's."""
        if self.graph is None or obj is self.graph.parameter or obj is self.graph:
            return True
        from .parameter import Parameter

        if isinstance(obj, Parameter):
            return False
        variables = getattr(obj, "variables", None)
        if not isinstance(variables, list) or not variables:
            return True  # nothing says it belongs elsewhere
        ours = {id(v) for v in self.graph.parameter.variable_dict.values()}
        return any(id(v) in ours for v in variables)

    def run(
        self, kind: str, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        replayed: bool = False,
    ) -> Any:
        """The hook's ``run`` event: an op's own code (``kind`` "forward", "loss", "backward") or a
        replayable call (``kind`` "call"), timed when it belongs to the profiled graph."""
        if not (self.covers_call(owner) if kind == "call" else self.covers(owner)) or (
            kind == "call" and _is_graph(owner)
        ):
            return function(*args, **kwargs)  # (another graph's; or graph.train()/eval(), not worth a timer)
        child = self.begin()
        start = perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            now = perf_counter()
            if kind == "call":
                self.end_call(owner, function, child, start, now, replayed)
            else:
                self.end(owner, kind, child, start, now, replayed)

    # -- results ---------------------------------------------------------------------------------
    @property
    def total(self) -> float:
        """The profiled blocks' wall time in seconds (so far, inside a block)."""
        running = perf_counter() - self._start if self._start is not None else 0.0
        return self.seconds + running

    def rows(self, by: str = "class") -> dict[str, OpStats]:
        """The op statistics summed per op class (``by="class"``) or per instance (``"instance"``),
        by name, the most time first."""
        _check_by(by)
        grouped: dict[str, OpStats] = {}
        for stats in self.ops.values():
            op = stats.op
            key = type(op).__name__ if by == "class" else op.name or type(op).__name__
            if by == "instance" and key in grouped and self.graph is None:
                key = f"{key} ({op.graph.name if op.graph else '?'})"  # one name in two graphs
            row = grouped.setdefault(key, OpStats(op))
            row.add(stats)
        return dict(sorted(grouped.items(), key=lambda item: -item[1].seconds))

    def to_dict(self) -> dict[str, Any]:
        """The numbers: the step's seconds and shares, per op class and instance, per call."""
        total = self.total
        forward = sum(s.forward + s.loss for s in self.ops.values())
        backward = sum(s.backward for s in self.ops.values())
        optimizer = sum(seconds for _, seconds in self.calls.values())
        timings = sum(s.calls + s.loss_calls + s.backward_calls for s in self.ops.values())
        timings += sum(count for count, _ in self.calls.values())
        rest = total - forward - backward - optimizer
        # (an estimate, so it never takes more than the rest: the shares still add up to the step)
        profiler = timings * self.cost
        profiler = min(profiler, max(rest, 0.0))
        seconds = {
            "ops": forward + backward, "framework": rest - profiler, "optimizer": optimizer, "profiler": profiler
        }

        def share(value: float) -> float:
            return value / total if total > 0 else 0.0

        def row(stats: OpStats) -> dict[str, Any]:
            return {
                "class": type(stats.op).__name__,
                "calls": stats.calls,
                "replayed": stats.replayed,
                "forward_seconds": stats.forward,
                "loss_calls": stats.loss_calls,
                "loss_seconds": stats.loss,
                "backward_calls": stats.backward_calls,
                "backward_seconds": stats.backward,
                "seconds": stats.seconds,
                "share": share(stats.seconds),
            }

        return {
            "total_seconds": total,
            "timed_calls": timings,
            "seconds": {**seconds, "ops_forward": forward, "ops_backward": backward},
            "shares": {name: share(value) for name, value in seconds.items()},
            "by_class": {name: row(s) for name, s in self.rows("class").items()},
            "by_instance": {name: row(s) for name, s in self.rows("instance").items()},
            "calls": {
                name: {"calls": count, "seconds": sec, "share": share(sec)}
                for name, (count, sec) in sorted(self.calls.items(), key=lambda item: -item[1][1])
            },
        }

    def table(self, by: str = "class") -> str:
        """The table as text, the most time first (op rows per class, or per ``"instance"``;
        then the replayable calls; then the step's shares). Times are each op's own."""
        _check_by(by)
        numbers = self.to_dict()
        header = ["Name", "Calls", "Replayed", "Forward", "Backward", "Total", "% step", "Per call"]
        body: list[list[str]] = []
        for name, r in numbers["by_class" if by == "class" else "by_instance"].items():
            per_call = r["seconds"] / r["calls"] if r["calls"] else 0.0
            forward = r["forward_seconds"] + r["loss_seconds"]
            body.append([name, str(r["calls"]), str(r["replayed"]), _duration(forward),
                         _duration(r["backward_seconds"]), _duration(r["seconds"]), f"{100 * r['share']:.1f}%",
                         _duration(per_call)])
        for name, c in numbers["calls"].items():
            body.append([name, str(c["calls"]), "", "", "", _duration(c["seconds"]), f"{100 * c['share']:.1f}%",
                         _duration(c["seconds"] / c["calls"])])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        rule = "  ".join("-" * w for w in widths)

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        shares, seconds = numbers["shares"], numbers["seconds"]
        total = numbers["total_seconds"]
        ops = 100 * shares["ops"]
        forward, backward = (100 * seconds[k] / total if total > 0 else 0.0 for k in ("ops_forward", "ops_backward"))
        lines = [rule, line(header), rule, *map(line, body), rule]
        lines += [
            f"Step total (the profiled block): {_duration(total)}",
            f"  ops' own code                     {ops:5.1f}%  (forward {forward:.1f}%, backward {backward:.1f}%)",
            f"  framework and Python around them  {100 * shares['framework']:5.1f}%",
            f"  optimizer                         {100 * shares['optimizer']:5.1f}%",
            f"  the profiler's own timers         {100 * shares['profiler']:5.1f}%  (estimated)",
        ]
        return "\n".join(lines) + "\n"


class _Dummy:
    """An op stand-in for ``Profile.calibrate``."""

    name = "calibration"

    def __init__(self, graph: Graph | None) -> None:
        self.graph = graph


def _is_graph(obj: Any) -> bool:
    from .graph import Graph

    return isinstance(obj, Graph)


def _check_by(by: str) -> None:
    if by not in ("class", "instance"):
        raise ArgumentError(f"tapegrad.profile: by must be 'class' or 'instance', got {by!r}")


def _duration(seconds: float) -> str:
    """Seconds in the unit that reads best: ``1.234s``, ``12.345ms``, ``3.210us``."""
    if seconds >= 1.0:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds * 1e6:.3f}us"
