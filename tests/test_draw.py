"""Drawings of a pass: ``graph.to_dot()``, ``step.to_dot()`` and ``tg.draw``."""

import copy
import gc
import pickle
import re
import shutil
import sys
import types
import weakref

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.models import MLP

# -- a small DOT parser: the subset of the DOT language a drawing may use ---------------------------------
TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<arrow>->)'
    r'|(?P<id>[A-Za-z_][A-Za-z_0-9.]*|-?\d+(?:\.\d+)?)|(?P<punct>[{}\[\]=;,]))'
)


def _tokens(text):
    position, tokens = 0, []
    text = text.rstrip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"not DOT at {text[position:position + 30]!r}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        tokens.append((kind, value))
        position = match.end()
    return tokens


def parse_dot(text):
    """{node: attributes}, [(tail, head, attributes)] of a ``digraph``; SyntaxError for anything else."""
    tokens = _tokens(text)
    pos = 0

    def take(kind=None, value=None):
        nonlocal pos
        if pos >= len(tokens):
            raise SyntaxError("unexpected end")
        k, v = tokens[pos]
        if (kind and k != kind) or (value and v != value):
            raise SyntaxError(f"expected {value or kind}, got {v!r}")
        pos += 1
        return v

    def attributes():
        found = {}
        if pos < len(tokens) and tokens[pos] == ("punct", "["):
            take("punct", "[")
            while tokens[pos] != ("punct", "]"):
                key = take("id")
                take("punct", "=")
                found[key] = take() if tokens[pos][0] in ("id", "string") else take("id")
                if tokens[pos] == ("punct", ","):
                    take("punct", ",")
            take("punct", "]")
        return found

    take("id", "digraph")
    if tokens[pos][0] in ("id", "string"):
        take()
    take("punct", "{")
    nodes, edges = {}, []
    while tokens[pos] != ("punct", "}"):
        name = take() if tokens[pos][0] in ("id", "string") else take("id")
        if name in ("graph", "node", "edge") and tokens[pos] == ("punct", "["):
            attributes()
        elif pos < len(tokens) and tokens[pos][0] == "arrow":
            take("arrow")
            head = take()
            edges.append((name, head, attributes()))
        else:
            if name in nodes:
                raise SyntaxError(f"node {name} declared twice")
            nodes[name] = attributes()
        take("punct", ";")
    take("punct", "}")
    if pos != len(tokens):
        raise SyntaxError("text after the graph")
    undeclared = {n for tail, head, _ in edges for n in (tail, head)} - set(nodes)
    if undeclared:
        raise SyntaxError(f"edges between undeclared nodes {undeclared}")
    return nodes, edges


def labels(nodes, prefix):
    return [attrs["label"] for name, attrs in nodes.items() if re.fullmatch(prefix + r"\d+", name)]


def test_the_parser_rejects_what_is_not_dot():
    for bad in ["graph x { a -> b; }", 'digraph { a [label="x"] }', "digraph { a -> ; }", "digraph { a; a; }"]:
        with pytest.raises(SyntaxError):
            parse_dot(bad)
    nodes, edges = parse_dot('digraph t {\n  a [label="x\\ny", shape=box];\n  b;\n  a -> b [label="out 1"];\n}\n')
    assert nodes == {"a": {"label": "x\ny", "shape": "box"}, "b": {}} and edges == [("a", "b", {"label": "out 1"})]


# -- known graphs --------------------------------------------------------------------------------------
def twice_applied():
    """affine -> tanh -> the same affine -> square loss: 4 applications, one op applied twice."""
    g = tg.Graph("twice", seed=0)
    affine, tanh, loss = g.get_operation("Affine", [3, 3]), g.get_operation("Tanh"), g.get_operation("SquareLoss")
    x, target = tg.Variable(np.ones((2, 3)), name="x"), np.zeros((2, 3))

    def step(x, target):
        loss(affine(tanh(affine(x))))
        value = loss.loss(target)
        g.backward()
        return value

    # nodes: 4 applications + x, target + W, b; edges: (1+2) + 1 + (1+2) + 1 + the target
    return g, step, (x, target), 4, 8, 9


def lstm_unrolled():
    """Two LSTMCell steps (two outputs each) feeding a square loss."""
    pytest.importorskip("tapegrad_rnn")
    g = tg.Graph("lstm", seed=0)
    cell, loss = g.get_operation("LSTMCell", [3, 4]), g.get_operation("SquareLoss")
    rng = np.random.default_rng(0)
    args = (
        rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), tg.Variable(np.zeros((2, 4))),
        tg.Variable(np.zeros((2, 4))), np.ones((2, 4)),
    )

    def step(x1, x2, h0, c0, target):
        h1, c1 = cell(x1, h0, c0)
        h2, _ = cell(x2, h1, c1)
        loss(h2)
        value = loss.loss(target)
        g.backward()
        return value

    # nodes: 3 applications + x1, h0, c0, x2, target + W, U, b; edges: 6 + 6 + 1 + the target
    return g, step, args, 3, 11, 14


def seed_mlp():
    model = MLP(64, 30, 10, seed=0)
    g = model.graph
    args = (np.random.default_rng(0).random((5, 64)), np.arange(5))

    def step(x, y):
        model.forward(x)
        value = model.loss(y)
        g.backward()
        return value

    # nodes: 4 applications + x, labels + 4 parameters; edges: 3 + 1 + 3 + 1 + the target
    return g, step, args, 4, 10, 9


GRAPHS = [twice_applied, lstm_unrolled, seed_mlp]


@pytest.mark.parametrize("make", GRAPHS)
def test_nodes_and_edges_are_the_applications_and_their_data_flow(make):
    g, step, args, apps, node_count, edge_count = make()
    step(*args)
    nodes, edges = parse_dot(g.to_dot())
    assert len(labels(nodes, "a")) == apps
    assert len(nodes) == node_count and len(edges) == edge_count  # one node per application, input, parameter
    last = f"a{apps - 1}"  # the loss: drawn as one, its target one more input
    assert nodes[last]["label"].endswith("\n-> loss") and nodes[last]["shape"] == "doubleoctagon"
    assert [n for n, attrs in nodes.items() if attrs.get("shape") == "doubleoctagon"] == [last]
    (target,) = [tail for tail, head, attrs in edges if head == last and attrs == {"label": "target"}]
    assert nodes[target]["label"].startswith("target")


def test_an_op_applied_twice_has_two_applications_sharing_its_parameters():
    g, step, args, *_ = twice_applied()
    step(*args)
    nodes, edges = parse_dot(g.to_dot())
    assert labels(nodes, "a") == [
        "affine_0 #1\nAffine\n-> (2, 3)", "tanh_0\nTanh\n-> (2, 3)", "affine_0 #2\nAffine\n-> (2, 3)",
        "square_loss_0\nSquareLoss\n-> (2, 3)\n-> loss",
    ]
    weight = next(name for name, attrs in nodes.items() if attrs["label"].startswith("affine_0.W"))
    assert sorted(head for tail, head, _ in edges if tail == weight) == ["a0", "a2"]
    assert ("a1", "a2", {}) in edges and ("a0", "a1", {}) in edges


def test_a_multi_output_op_labels_its_outputs_on_the_edges():
    g, step, args, *_ = lstm_unrolled()
    step(*args)
    nodes, edges = parse_dot(g.to_dot())
    assert ("a0", "a1", {"label": "out 0"}) in edges and ("a0", "a1", {"label": "out 1"}) in edges
    assert ("a1", "a2", {"label": "out 0"}) in edges  # h2 feeds the loss; c2 goes nowhere
    assert "-> (2, 4), (2, 4)" in nodes["a0"]["label"]


def norm(v):
    return f"|grad| = {np.linalg.norm(v.grad):.3g}"


def test_gradient_norms_appear_on_inputs_and_parameters_after_backward():
    g, step, (x1, x2, h0, c0, target), *_ = lstm_unrolled()
    cell = g.operations["lstm_cell_0"]
    cell(x1, h0, c0)
    before = g.to_dot()
    assert "|grad|" not in before and "in flight" in before
    g.clear()
    step(x1, x2, h0, c0, target)
    after = g.to_dot()
    assert g.forward_ops == [] and "after backward" in after
    nodes, _ = parse_dot(after)
    shown = {attrs["label"] for attrs in nodes.values()}
    for name, variable in cell.parameters().items():
        assert f"lstm_cell_0.{name}\n{variable.shape}\n{norm(variable)}" in shown
    assert f"input\n(2, 4)\n{norm(h0)}" in shown and f"input\n(2, 4)\n{norm(c0)}" in shown
    assert "input\n(2, 3)" in shown  # an array: no gradient


@pytest.mark.parametrize(
    "grad, shown",
    [(1e200, "|grad| = 2e+200"), (np.inf, "|grad| = inf"), (np.nan, "|grad| = nan"), (0.0, "|grad| = 0")],
)
def test_any_gradient_norm_is_shown_without_warnings(grad, shown):
    g = tg.Graph("norms")
    x = tg.Variable(np.zeros(4))
    y = g.get_operation("Tanh")(x)
    g.backward(grads={y: np.array([grad, grad, grad, grad])})  # tanh'(0) = 1: x.grad is the seed
    nodes, _ = parse_dot(g.to_dot())
    assert nodes["x0"]["label"] == f"input\n(4,)\n{shown}"


@pytest.mark.parametrize("then", ["nothing", "an eval forward"])
def test_the_drawing_outlives_the_tape_but_keeps_no_activations(then):
    g, _, (x, y), *_ = seed_mlp()
    ops = [g.operations[n] for n in ("affine_0", "sigmoid_0", "affine_1", "softmax_loss_0")]
    ops[3](ops[2](ops[1](ops[0](x))))
    hidden = weakref.ref(g.forward_ops[1].outputs.value)  # the sigmoid's activation
    ops[3].loss(y)
    g.backward()
    gc.collect()
    assert hidden() is None  # gone as soon as backward returns: the pass is kept as plain data
    drawn = g.to_dot()
    if then == "an eval forward":
        g.eval()
        ops[0](x)  # records nothing, and leaves the tape alone
        g.train()
    again = g.to_dot()
    assert "4 applications (after backward)" in again and "|grad|" in again
    assert again == drawn


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda g: pickle.loads(pickle.dumps(g))])
def test_a_copy_draws_the_same_pass_without_its_activations(clone):
    g, step, args, *_ = seed_mlp()
    step(*args)
    twin = clone(g)
    assert twin.tape.last_pass is not g.tape.last_pass
    assert twin.to_dot() == g.to_dot()


def test_a_tape_pickled_before_drawings_existed_still_works():
    g, step, args, *_ = seed_mlp()
    state = g.tape.__getstate__()
    for name in ("targets", "last_pass", "latest_eval"):
        del state[name]
    g.tape = tg.Tape.__new__(tg.Tape)
    g.tape.__setstate__(state)
    step(*args)
    assert "4 applications (after backward)" in g.to_dot()


def test_a_new_pass_supersedes_the_last_one():
    g, step, args, *_ = twice_applied()
    step(*args)
    tanh = g.operations["tanh_0"]
    tanh(np.ones(2))
    nodes, _ = parse_dot(g.to_dot())
    assert labels(nodes, "a") == ["tanh_0\nTanh\n-> (2,)"]
    g.clear()
    with pytest.raises(tg.GraphError, match="no pass to draw"):
        g.to_dot()


def test_gradcheck_does_not_replace_the_users_drawing():
    model = MLP(4, 3, 2, seed=0)
    x, y = tg.Variable(np.random.default_rng(0).random((3, 4))), tg.Variable(np.array([0, 1, 1]))
    model.forward(x)
    model.loss(y)
    model.graph.backward()
    drawn = model.graph.to_dot()
    tg.numerical_gradient_check(model, x, y)
    without_norms = re.compile(r"\\n\|grad\| = [^\"]*")  # (the check itself leaves gradients on x)
    assert without_norms.sub("", model.graph.to_dot()) == without_norms.sub("", drawn)


def statements(text):
    """The node and edge statements, without the graph's title."""
    return [line for line in text.splitlines() if not line.lstrip().startswith("graph [")]


@pytest.mark.parametrize("make", GRAPHS)
def test_a_captured_step_draws_as_its_eager_run(make):
    g, step, args, apps, node_count, edge_count = make()
    step(*args)
    eager = g.to_dot()
    captured = g.capture(step)
    for _ in range(3):  # record, verified replay, replay
        g.parameter.clear_grads()
        for a in args:
            if isinstance(a, tg.Variable):
                a.clear_grad()
        captured(*args)
        drawn = captured.to_dot()
        assert statements(drawn) == statements(eager)
    assert "captured step" in drawn and "(its record)" in drawn
    nodes, edges = parse_dot(drawn)
    assert len(nodes) == node_count and len(edges) == edge_count


def test_a_captured_step_draws_the_gradients_of_the_latest_calls_variables():
    """Variables passed in are drawn with the gradient the latest call gave them, as the eager
    twin's drawing shows them, not with the first call's."""
    drawn = {}
    for captured in (False, True):
        g = tg.Graph("g", seed=0)
        affine, loss = g.get_operation("Affine", [3, 2]), g.get_operation("SquareLoss")

        def fn(x, t, g=g, affine=affine, loss=loss):
            loss.forward(affine(x))
            value = loss.loss(t)
            g.backward()
            return value

        step = g.capture(fn) if captured else fn
        rng = np.random.default_rng(1)
        for _ in range(4):
            x = tg.Variable(rng.standard_normal((2, 3)), name="x")
            step(x, rng.standard_normal((2, 2)))
            drawn.setdefault(captured, []).append(statements(step.to_dot() if captured else g.to_dot()))
            g.parameter.clear_grads()
    assert drawn[True] == drawn[False]
    assert len({tuple(d) for d in drawn[True]}) == 4  # each call's own gradient norms


def test_parameters_belong_to_the_op_with_the_longest_matching_name():
    g = tg.Graph("g")
    enc = g.get_operation("Affine", [2, 2], name="enc")
    inner = g.get_operation("Affine", [2, 2], name="enc.1")
    assert enc.parameters() == {"W": enc.W, "b": enc.b} and inner.parameters() == {"W": inner.W, "b": inner.b}
    inner(enc(tg.Variable(np.ones((1, 2)))))
    nodes, edges = parse_dot(g.to_dot())
    names = {name: attrs["label"].split("\n")[0] for name, attrs in nodes.items()}
    fed = sorted((names[tail], head) for tail, head, _ in edges if names[tail].endswith((".W", ".b")))
    assert fed == [("enc.1.W", "a1"), ("enc.1.b", "a1"), ("enc.W", "a0"), ("enc.b", "a0")]


def test_a_captured_eval_step_draws_its_applications():
    model = MLP(6, 4, 3, seed=0)
    model.graph.eval()
    predict = model.graph.capture(model.forward)
    predict(np.ones((2, 6)))
    nodes, edges = parse_dot(predict.to_dot())
    assert len(labels(nodes, "a")) == 4 and "|grad|" not in predict.to_dot()
    assert "-> loss" not in predict.to_dot() and "target" not in predict.to_dot()  # no loss was computed


def test_nothing_to_draw_is_a_clear_error(tmp_path):
    g = tg.Graph("empty")
    with pytest.raises(tg.GraphError, match="Graph 'empty' has no pass to draw"):
        g.to_dot()
    step = g.capture(lambda x: None)
    with pytest.raises(tg.GraphError, match="no record to draw yet"):
        step.to_dot()
    with pytest.raises(tg.InputTypeError, match="expected a Graph, a captured step or a model"):
        tg.draw(42, tmp_path / "x.dot")
    assert list(tmp_path.iterdir()) == []


def test_names_are_quoted():
    g = tg.Graph("q")
    op = g.get_operation("Tanh", name='t"1\\')
    op(np.ones(2))
    nodes, _ = parse_dot(g.to_dot())
    assert nodes["a0"]["label"].startswith('t"1\\\n')


# -- tg.draw -------------------------------------------------------------------------------------------
@pytest.fixture
def drawn_graph():
    g, step, args, *_ = seed_mlp()
    step(*args)
    return g


@pytest.mark.parametrize("name", ["tape.dot", "tape.gv"])
def test_draw_writes_dot_text_without_any_dependency(drawn_graph, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    written = tg.draw(drawn_graph, tmp_path / "sub" / name)
    assert written == tmp_path / "sub" / name
    assert written.read_text() == drawn_graph.to_dot()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [name]


def test_draw_takes_a_model_or_a_step(tmp_path):
    model = MLP(4, 3, 2, seed=0)
    model.graph.eval()
    step = model.graph.capture(lambda x: model.forward(x))
    step(np.ones((1, 4)))
    model.graph.train()
    model.forward(np.ones((1, 4)))  # the same pass, eagerly, in flight
    tg.draw(model, tmp_path / "model.dot")
    tg.draw(step, tmp_path / "step.dot")
    assert statements((tmp_path / "model.dot").read_text()) == statements((tmp_path / "step.dot").read_text())


def test_an_unsupported_format_is_refused_before_writing(drawn_graph, tmp_path):
    for name in ["tape.jpeg", "tape"]:
        with pytest.raises(tg.ArgumentError, match=r"unsupported format .*supported: \.dot, \.gv, \.svg, \.png, \.pdf"):
            tg.draw(drawn_graph, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def fake_graphviz(pipe):
    module = types.ModuleType("graphviz")

    class ExecutableNotFound(RuntimeError):
        pass

    class Source:
        def __init__(self, text):
            self.text = text

        def pipe(self, format):
            return pipe(self.text, format, ExecutableNotFound)

    module.Source, module.ExecutableNotFound = Source, ExecutableNotFound
    return module


def test_draw_renders_through_the_graphviz_package(drawn_graph, tmp_path, monkeypatch):
    seen = []

    def pipe(text, fmt, _):
        seen.append((text, fmt))
        return b"<svg>rendered</svg>"

    monkeypatch.setitem(sys.modules, "graphviz", fake_graphviz(pipe))
    written = tg.draw(drawn_graph, tmp_path / "tape.svg")
    assert written.read_bytes() == b"<svg>rendered</svg>"
    assert (tmp_path / "tape.dot").read_text() == drawn_graph.to_dot()
    assert seen == [(drawn_graph.to_dot(), "svg")]


def test_without_the_graphviz_package_the_dot_file_is_still_written(drawn_graph, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz raises ImportError
    with pytest.raises(tg.MissingDependencyError) as info:
        tg.draw(drawn_graph, tmp_path / "tape.png")
    message = str(info.value)
    assert "needs the graphviz package" in message and "pip install 'tapegrad[draw]'" in message
    assert "apt-get install graphviz" in message and str(tmp_path / "tape.dot") in message
    assert isinstance(info.value, ImportError)
    assert (tmp_path / "tape.dot").read_text() == drawn_graph.to_dot() and not (tmp_path / "tape.png").exists()


def test_without_dot_the_error_says_what_to_install(drawn_graph, tmp_path, monkeypatch):
    def pipe(text, fmt, missing):
        raise missing("failed to execute 'dot'")

    monkeypatch.setitem(sys.modules, "graphviz", fake_graphviz(pipe))
    with pytest.raises(
        tg.MissingDependencyError, match=r"needs Graphviz's dot program.*pip install 'tapegrad\[draw\]'"
    ):
        tg.draw(drawn_graph, tmp_path / "tape.svg")
    assert (tmp_path / "tape.dot").read_text() == drawn_graph.to_dot() and not (tmp_path / "tape.svg").exists()


def test_dot_missing_from_the_path_with_the_real_package(drawn_graph, tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    with pytest.raises(
        tg.MissingDependencyError, match="needs Graphviz's dot program, which is not on the PATH"
    ) as info:
        tg.draw(drawn_graph, tmp_path / "tape.svg")
    assert str(tmp_path / "tape.dot") in str(info.value)
    assert (tmp_path / "tape.dot").read_text() == drawn_graph.to_dot() and not (tmp_path / "tape.svg").exists()


def test_a_failing_dot_is_a_clear_error(drawn_graph, tmp_path, monkeypatch):
    def pipe(text, fmt, _):
        raise RuntimeError("syntax error in line 1")

    monkeypatch.setitem(sys.modules, "graphviz", fake_graphviz(pipe))
    with pytest.raises(tg.GraphError, match="dot failed to render SVG .*syntax error in line 1.*tape.dot"):
        tg.draw(drawn_graph, tmp_path / "tape.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
@pytest.mark.parametrize("fmt, magic", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_draw_renders_with_graphviz(drawn_graph, tmp_path, fmt, magic):
    pytest.importorskip("graphviz")
    written = tg.draw(drawn_graph, tmp_path / f"tape.{fmt}")
    assert magic in written.read_bytes()[:400]


@pytest.mark.parametrize("name", ["nul\x00here", "lone \udcff surrogate", 'quote " and \\ backslash', "tab\there\x07"])
def test_any_name_is_escaped_into_dot_graphviz_accepts(name, tmp_path):
    g = tg.Graph(name, seed=0)
    w = g.get_variable(name + ".w", (2,), init="ones")
    mul = g.get_operation("Multiply", name=name)
    loss = g.get_operation("SquareLoss")
    loss(mul(tg.Variable(np.ones(2), name=name), w))
    loss.loss(np.zeros(2))
    g.backward()
    text = g.to_dot()
    text.encode("utf-8")  # no lone surrogate: writable as UTF-8
    assert "\x00" not in text and "\x07" not in text and "\t" not in text
    parse_dot(text)  # quoted strings still close where they should
    assert tg.draw(g, tmp_path / "tape.dot").read_text(encoding="utf-8") == text
