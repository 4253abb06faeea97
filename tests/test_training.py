"""Optimizers, Trainer and the `tapegrad train` / `evaluate` commands."""

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.cli import main
from tapegrad.datasets import load_digits
from tapegrad.models import MLP
from tapegrad.optim import SGD, Adam
from tapegrad.training import Metric


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def test_load_digits_is_scaled_and_split(digits):
    x_train, x_test, y_train, y_test = digits
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert y_train.dtype.kind == "i" and set(np.unique(y_train)) == set(range(10))


def test_trainer_lowers_the_loss_and_reaches_a_stated_accuracy_on_a_subset(digits, capsys):
    x_train, x_test, y_train, y_test = digits
    model = MLP(64, 30, 10, seed=0)
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.3), batch_size=1, seed=0)
    history = trainer.train(x_train[:300], y_train[:300], x_test, y_test, epochs=5)
    assert history.train_loss[-1] < history.train_loss[0] * 0.5
    assert history[-1].test_accuracy >= 0.85
    assert len(history) == 5 and all(s > 0 for s in history.seconds)
    out = capsys.readouterr()
    assert "=== Epoch 5 Summary === train loss:" in out.out and "test accuracy 0." in out.out
    assert "epoch 1/5" not in out.err, "no progress bar when output is not a terminal"


def test_full_default_recipe_reaches_97_percent_for_seed_0(digits):
    x_train, x_test, y_train, y_test = digits
    model = MLP(64, 30, 10, seed=0)
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.3), batch_size=1, seed=0, verbose=False)
    trainer.train(x_train, y_train, epochs=40)
    assert trainer.test(x_test, y_test) >= 0.97


def test_batched_training_and_adam(digits):
    x_train, x_test, y_train, y_test = digits
    model = MLP(64, 30, 10, seed=1)
    trainer = tg.Trainer(model, Adam(model.graph.parameter, 0.01), batch_size=32, seed=1, verbose=False)
    trainer.train(x_train, y_train, epochs=10)
    assert trainer.test(x_test, y_test) >= 0.93
    assert model.graph.forward_ops == [] and model.graph.train_state


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.ones((5, 64)), np.zeros(4, dtype=int), "x has 5 samples but y has 4"),
        (np.ones((5, 63)), np.zeros(5, dtype=int), "expects 64 features"),
        (np.ones((5, 64)), np.array([0, 1, 2, 3, 10]), "label 10 is out of range"),
        (np.ones((5, 64)), np.array([0, 1, 2, 3, -1]), "label -1"),
        (np.ones((0, 64)), np.zeros(0, dtype=int), "empty"),
    ],
)
def test_trainer_rejects_bad_data(x, y, match):
    model = MLP(64, 4, 10)
    with pytest.raises(tg.TrainingError, match=match):
        tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False).train(x, y, epochs=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "x_test"])
def test_non_finite_data_is_refused_before_training_changes_anything(digits, bad, where):
    x_train, x_test, y_train, y_test = digits
    data = {"x": x_train[:20].copy(), "x_test": x_test[:10].copy()}
    data[where][3, 5] = bad
    model = MLP(64, 8, 10, seed=0)
    before = {k: v.value.copy() for k, v in model.graph.parameter.variable_dict.items()}
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), seed=0, verbose=False)
    with pytest.raises(tg.TrainingError, match=r"non-finite value.*\[3, 5\]"):
        trainer.train(data["x"], y_train[:20], data["x_test"], y_test[:10], epochs=1)
    for name, value in before.items():
        assert np.array_equal(model.graph.parameter[name].value, value)


@pytest.mark.parametrize("capture", [True, False])
def test_a_diverging_step_stops_training_before_it_is_applied(digits, capture):
    x_train, _, y_train, _ = digits
    model = MLP(64, 8, 10, seed=0)
    steps = []

    class Watched(SGD):  # remembers the parameters each applied step left behind
        def step(self):
            super().step()
            steps.append([v.value.copy() for v in self.variables])

    optimizer = Watched(model.graph.parameter, 1e308)  # the second step overflows
    trainer = tg.Trainer(model, optimizer, seed=0, verbose=False, capture=capture)
    with pytest.raises(tg.TrainingError, match=r"epoch 1, step \d+ of 20.*last good step.*smaller learning rate"):
        trainer.train(x_train[:20], y_train[:20], epochs=3)
    for v in model.graph.parameter:
        assert np.isfinite(v.value).all()
    assert steps, "at least one step was applied before the numbers overflowed"
    for v, last in zip(optimizer.variables, steps[-1]):
        assert np.array_equal(v.value, last)  # the last applied step's parameters, nothing after
    assert model.graph.forward_ops == []


def test_cli_train_save_evaluate_round_trip(tmp_path, capsys):
    path = tmp_path / "mlp.npz"
    plot = tmp_path / "curve.png"
    assert (
        main(["train", "--epochs", "2", "--no-progress", "--save", str(path), "--plot", str(plot), "--gradcheck"]) == 0
    )
    out = capsys.readouterr().out
    assert "gradient check passed" in out and "affine_0.W match" in out
    final = float(out.split("final test accuracy: ")[1].split()[0])
    assert path.exists() and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "--load", str(path)]) == 0
    assert f"test accuracy: {final:.4f}" in capsys.readouterr().out


def test_cli_evaluate_refuses_a_file_that_does_not_fit(tmp_path, capsys):
    path = tmp_path / "small.npz"
    assert main(["train", "--epochs", "1", "--hidden", "5", "--no-progress", "--save", str(path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--load", str(path), "--hidden", "30"]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "Traceback" not in err
    assert main(["evaluate", "--load", str(tmp_path / "missing.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"], ["--lr", "-1"], ["--lr", "abc"], ["--optimizer", "rmsprop"], ["--batch-size", "x"],
        ["--seed", "-2"],
    ],
)
def test_cli_train_rejects_invalid_values(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_plot_without_matplotlib_is_a_clear_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["train", "--epochs", "1", "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install 'tapegrad[plot]'" in capsys.readouterr().err


def test_cli_gradcheck_failure_stops_with_non_zero_exit(monkeypatch, capsys):
    from tapegrad.plugins.layers import Affine

    original = Affine.backward

    def planted(self, ctx, grad):
        out = original(self, ctx, grad)
        self.W.grad *= 1.5
        return out

    monkeypatch.setattr(Affine, "backward", planted)
    assert main(["train", "--epochs", "1", "--gradcheck", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "NOT MATCH !" in captured.out and "not training" in captured.err


def test_progress_bar_shows_on_a_terminal(digits, monkeypatch, capsys):
    import sys

    x_train, _, y_train, _ = digits
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    model = MLP(64, 5, 10, seed=0)
    tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False).train(x_train[:200], y_train[:200], epochs=1)
    assert "epoch 1/1" in capsys.readouterr().err
    tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False, progress=False).train(
        x_train[:200], y_train[:200], epochs=1
    )
    assert "epoch 1/1" not in capsys.readouterr().err


def test_an_evaluation_only_trainer_refuses_to_train(digits):
    x_train, x_test, y_train, y_test = digits
    model = MLP(64, 5, 10, seed=0)
    evaluator = tg.Trainer(model, None, verbose=False)
    assert 0.0 <= evaluator.test(x_test, y_test) <= 1.0
    with pytest.raises(tg.TrainingError, match="no optimizer"):
        evaluator.train(x_train, y_train, epochs=1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": float("nan")}, tg.InputTypeError, "batch_size must be a whole number"),
        ({"batch_size": 0}, tg.ArgumentError, "batch_size must be at least 1"),
        ({"epochs": float("nan")}, tg.InputTypeError, "epochs must be a whole number"),
        ({"epochs": 0}, tg.ArgumentError, "epochs must be at least 1"),
        ({"epochs": 2, "tol": float("nan")}, tg.ArgumentError, "tol must be at least 0"),
    ],
)
def test_trainer_arguments_are_checked(digits, kwargs, error, match):
    x_train, _, y_train, _ = digits
    model = MLP(64, 3, 10)
    make = {k: v for k, v in kwargs.items() if k == "batch_size"}
    train = {k: v for k, v in kwargs.items() if k != "batch_size"}
    with pytest.raises(error, match=match):
        tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False, **make).train(
            x_train[:10], y_train[:10], **train
        )


@pytest.fixture
def fitted():
    model = MLP(4, 3, 2, seed=0)
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), progress=False, verbose=False)
    trainer.train(np.random.default_rng(0).random((10, 4)), np.arange(10) % 2, epochs=1)
    return trainer


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_input_before_computing(fitted, bad, monkeypatch):
    x = np.array([[1.0, 2, 3, 4], [1, 2, 3, 4]])
    x[1, 2] = bad
    monkeypatch.setattr(fitted.model, "forward", lambda x: pytest.fail("predict ran the model"))
    with pytest.raises(tg.TrainingError, match=rf"Trainer.predict: x holds a non-finite value \({bad} at \[1, 2\]\)"):
        fitted.predict(x)


def test_an_out_of_range_float_label_is_named_as_given(fitted):
    with pytest.raises(tg.TrainingError, match=r"label 1e\+20 is out of range \[0, 2\)"):
        fitted.train(np.ones((2, 4)), np.array([1e20, 0.0]), epochs=1)

    class Unsized:  # no output_size: only the int64 bound stands between 1e20 and a garbage class
        graph = fitted.graph
        forward = fitted.model.forward
        loss = fitted.model.loss

    trainer = tg.Trainer(Unsized(), SGD(fitted.graph.parameter, 0.1), progress=False, verbose=False)
    with pytest.raises(tg.TrainingError, match=r"label 1e\+20 is too large"):
        trainer.train(np.ones((2, 4)), np.array([1e20, 0.0]), epochs=1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.train(np.float64(3), np.int64(1)),
         r"Trainer.train: expected x of shape \(samples, 4\).*shape \(\)"),
        (lambda t: t.train(np.ones((1, 4)), np.int64(1)),
         r"Trainer.train: expected y of shape \(samples,\).*shape \(\)"),
        (lambda t: t.test(np.ones(4)[0], np.int64(1)), r"Trainer.test: expected x of shape \(samples, 4\)"),
        (lambda t: t.predict(np.float64(3)), r"Trainer.predict: expected x of shape \(samples, 4\).*shape \(\)"),
    ],
    ids=["train-x", "train-y", "test-x", "predict-x"],
)
def test_scalar_data_is_a_shape_error_naming_what_was_expected(fitted, call, match):
    with pytest.raises(tg.ShapeError, match=match):
        call(fitted)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.predict(np.array([["a"] * 4])), r"Trainer.predict: expected x to hold numbers.*dtype <U1"),
        (lambda t: t.predict(np.array([["1"] * 4])), r"Trainer.predict: expected x to hold numbers.*dtype <U1"),
        (lambda t: t.predict(np.ones((1, 4), complex)), r"Trainer.predict: expected x.*dtype complex128"),
        (lambda t: t.predict([[1, 2, 3, 4], [1]]), r"Trainer.predict: expected x as a numeric array"),
        (lambda t: t.train(np.array([["a"] * 4]), [0]), r"Trainer.train: expected x to hold numbers.*dtype <U1"),
        (lambda t: t.train(np.ones((1, 4)), ["a"]), r"Trainer.train: expected y to hold numbers.*dtype <U1"),
        (lambda t: t.test(np.array([[None] * 4]), [0]), r"Trainer.test: expected x to hold numbers.*dtype object"),
    ],
    ids=["predict-str", "predict-numeric-str", "predict-complex", "predict-ragged", "train-x", "train-y", "test-x"],
)
def test_non_numeric_data_is_a_training_error_naming_it_and_its_dtype(fitted, call, match):
    with pytest.raises(tg.TrainingError, match=match):  # (a ValueError, as before)
        call(fitted)


# -- sequence batches, metrics, callbacks ------------------------------------------------------------------
class TokenModel:
    """Embedding -> (times a per-sample scale, an extra input) -> Affine -> SoftmaxLoss over positions,
    labels padded with -1: a sequence model whose inputs are integer ids (N, T) and scales (N, 1, 1)."""

    def __init__(self, vocab=6, width=4, seed=0, ignore_index=-1, scaled=True, dtype=np.float64):
        self.graph = tg.Graph("tokens", seed=seed, dtype=dtype)
        self.embed = self.graph.get_operation("Embedding", [vocab, width])
        self.multiply = self.graph.get_operation("Multiply") if scaled else None
        self.out = self.graph.get_operation("Affine", [width, vocab])
        self.softmax_loss = self.graph.get_operation("SoftmaxLoss", ignore_index=ignore_index)
        self.output_size, self.ignore_index = vocab, ignore_index
        self.seen = []

    def forward(self, ids, scale=None):
        self.seen.append(ids.dtype)
        h = self.embed(ids)
        if self.multiply is not None:
            h = self.multiply(h, scale)
        return self.softmax_loss(self.out(h))

    def loss(self, target):
        return self.softmax_loss.loss(target)


def token_data(n=24, steps=5, vocab=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, steps))
    labels = (ids + 1) % vocab  # the next id: learnable from the id alone
    labels[::3, -2:] = -1  # padding
    scale = rng.uniform(0.5, 1.5, size=(n, 1, 1))
    return ids, labels, scale


@pytest.mark.parametrize("capture", [True, False])
def test_sequence_batches_keep_integer_ids_and_extra_inputs_and_padded_labels(capture):
    ids, labels, scale = token_data()
    model = TokenModel()
    steps = []
    trainer = tg.Trainer(model, Adam(model.graph.parameter, 0.05), batch_size=8, verbose=False, progress=False,
                         capture=capture)
    history = trainer.train((ids, scale), labels, (ids, scale), labels, epochs=30,
                            on_step=lambda epoch, step, loss: steps.append((epoch, step, loss)))
    assert set(model.seen) == {np.dtype(np.int64)}, "ids reach the model as integers"
    assert [(e, s) for e, s, _ in steps] == [(e, s) for e in range(1, 31) for s in (1, 2, 3)]
    assert [loss for _, _, loss in steps] == history.step_losses
    assert all(len(r.step_losses) == 3 for r in history)
    # the epoch's loss is the batches' losses weighted by their sizes (three batches of 8)
    assert history[0].train_loss == pytest.approx(sum(history[0].step_losses) / 3, rel=1e-12)
    assert history[-1].metrics["accuracy"] == 1.0 and history[0].metrics["accuracy"] < 0.6
    counted = labels != -1
    predicted = trainer.predict((ids, scale))
    assert predicted.shape == labels.shape and np.array_equal(predicted[counted], labels[counted])


def test_the_trainer_names_a_label_out_of_range_even_with_padding():
    ids, labels, scale = token_data()
    labels[4, 1] = 6
    model = TokenModel()
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False)
    with pytest.raises(
        tg.TrainingError, match=r"label 6 is out of range \[0, 6\) \(positions labelled ignore_index=-1"
    ):
        trainer.train((ids, scale), labels, epochs=1)
    labels[4, 1] = -2
    with pytest.raises(tg.TrainingError, match=r"label -2 is out of range"):
        trainer.train((ids, scale), labels, epochs=1)


def test_inputs_of_a_tuple_must_agree_on_the_sample_count():
    ids, labels, scale = token_data()
    model = TokenModel()
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False)
    with pytest.raises(tg.TrainingError, match=r"x\[0\] has 24 samples but x\[1\] has 23"):
        trainer.train((ids, scale[:-1]), labels, epochs=1)
    with pytest.raises(tg.TrainingError, match=r"x\[1\] holds a non-finite value \(nan at \[2, 0, 0\]\)"):
        bad = scale.copy()
        bad[2] = np.nan
        trainer.train((ids, bad), labels, epochs=1)


def test_labels_of_another_task_are_left_to_the_model_and_a_model_check_replaces_the_trainers():
    ids, labels, scale = token_data()
    model = TokenModel()
    model.task = "sequence"
    labels[0, 0] = 17  # nothing but the loss knows: it says so when the step runs
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False, capture=False)
    with pytest.raises(tg.OutOfRangeError, match="17"):
        trainer.train((ids, scale), labels, epochs=1, )
    checked = []

    def check_target(y, where):
        checked.append(where)
        if (y > 5).any():
            raise tg.TrainingError(f"{where}: my own message")
        return y

    model.check_target = check_target
    with pytest.raises(tg.TrainingError, match="Trainer.train: my own message"):
        trainer.train((ids, scale), labels, epochs=1)
    assert checked == ["Trainer.train"]


class Twice(Metric):
    name = "errors"
    higher_is_better = False

    def __call__(self, outputs, targets, *, inputs, loss):
        wrong = outputs.argmax(-1) != targets
        return {"errors": float(wrong.sum()), "rows with an error": float(wrong.any(axis=-1).sum())}


def test_the_model_names_its_metric_and_the_summary_shows_every_value(capsys):
    from tapegrad.training import Perplexity

    ids, labels, scale = token_data()
    labels[labels == -1] = 0
    model = TokenModel(ignore_index=None)
    model.metric = Perplexity()
    trainer = tg.Trainer(model, Adam(model.graph.parameter, 0.05), batch_size=8, progress=False)
    history = trainer.train((ids, scale), labels, (ids, scale), labels, epochs=2, held_out="validation")
    model.graph.eval()
    model.forward(ids, scale)
    expected = np.exp(model.loss(labels))
    model.graph.train()
    assert history[-1].metric == pytest.approx(expected, rel=1e-12)
    assert (
        f"=== Epoch 2 Summary === train loss: {history[-1].train_loss:.4f} validation perplexity {expected:.4f}"
        in capsys.readouterr().out
    )
    batched = tg.Trainer(model, None, eval_batch_size=5, verbose=False).evaluate((ids, scale), labels)
    assert batched["perplexity"] == pytest.approx(expected, rel=1e-12)  # every sample counts five positions
    model.metric = Twice()
    values = tg.Trainer(model, None, verbose=False, eval_batch_size=7).evaluate((ids, scale), labels)
    assert list(values) == ["errors", "rows with an error"]
    wrong = trainer.predict((ids, scale)) != labels
    assert values == {"errors": wrong.sum(), "rows with an error": wrong.any(axis=-1).sum()}
    assert tg.Trainer(model, None, verbose=False).test((ids, scale), labels) == wrong.sum()


def test_a_metric_that_is_not_one_is_refused():
    model = MLP(4, 3, 2)
    model.metric = "accuracy"
    with pytest.raises(tg.InputTypeError, match="metric must be a tapegrad.training.Metric, got str"):
        tg.Trainer(model, None)


def test_predict_during_a_forward_in_flight_leaves_the_pairing_alone(digits):
    x_train, x_test, y_train, y_test = digits
    model = MLP(64, 8, 10, seed=0)
    trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.1), verbose=False)
    trainer.train(x_train[:50], y_train[:50], epochs=1)  # the captured steps exist
    reference = MLP(64, 8, 10, seed=0)
    reference.graph.parameter.load_state_dict(model.graph.parameter.state_dict())
    reference.forward(x_train[:4])
    expected = reference.loss(y_train[:4])
    reference.graph.backward()

    model.forward(x_train[:4])  # a forward in flight, in train mode
    trainer.predict(x_test[:7])  # and a prediction meanwhile, in eval mode
    trainer.test(x_test, y_test)
    assert model.loss(y_train[:4]) == expected  # pairs with the train-mode forward, not the prediction
    model.graph.backward()
    for name, v in model.graph.parameter.variable_dict.items():
        assert np.array_equal(v.grad, reference.graph.parameter[name].grad)


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_the_shipped_models_capture_cleanly_and_their_captured_runs_equal_eager(digits, name):
    import argparse
    import warnings

    from tapegrad.registry import find_task

    x_train, x_test, y_train, y_test = digits
    results = []
    for capture in (True, False):
        options = argparse.Namespace(
            seed=0, limit=None, dtype=np.dtype(np.float64), hidden=8, batch_size=16, optimizer="sgd"
        )
        task = find_task(name)(options)
        model = task.build_model(task.load_data())
        trainer = tg.Trainer(model, SGD(model.graph.parameter, 0.3), batch_size=16, verbose=False, capture=capture)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tg.CaptureWarning)
            history = trainer.train(x_train[:200], y_train[:200], x_test, y_test, epochs=2)
            from tapegrad.training import MeanLoss

            trainer.metric = MeanLoss()  # a held-out pass that computes the loss in eval mode, captured too
            held_out = trainer.evaluate(x_test, y_test)
        from tapegrad.capture import CapturedStep

        steps = (trainer._train_step, trainer._predict_step, trainer._evaluate_step)
        assert all(isinstance(step, CapturedStep) == capture for step in steps)  # no fallback to eager
        results.append((history.step_losses, history.metric, held_out, [v.value.copy() for v in model.graph.parameter]))
    (losses, metric, held, params), (losses2, metric2, held2, params2) = results
    assert losses == losses2 and metric == metric2 and held == held2
    assert all(np.array_equal(a, b) for a, b in zip(params, params2))
