"""TabularGame: the background-set game (shap's Independent masker), against its definition by
hand, exact enumeration, the efficiency identity, groups, weights, pandas and torch inputs."""
import itertools

import numpy as np
import pytest

import shapcam

RNG = np.random.default_rng(0)
D, R = 5, 7
W = RNG.normal(size=(D, 3))


def predict(X):
    X = np.asarray(X, dtype=np.float64)
    return np.tanh(X @ W) + X[:, :1] * X[:, 1:2]  # [rows, 3], with an interaction


X0 = RNG.normal(size=D)
BG = RNG.normal(size=(R, D))
WEIGHTS = RNG.random(R)


def by_hand(S, x=X0, bg=BG, w=WEIGHTS, f=predict):
    rows = np.where(np.asarray(S)[None, :], x[None], bg)
    return (f(rows) * (w / w.sum())[:, None]).sum(0)


ALL = np.array(list(itertools.product([False, True], repeat=D)))


def test_values_are_the_weighted_mean_over_the_background():
    g = shapcam.TabularGame(predict, X0, BG, weights=WEIGHTS)
    np.testing.assert_allclose(np.asarray(g.evaluate_masks(ALL)), np.stack([by_hand(S) for S in ALL]),
                               rtol=0, atol=1e-14)
    assert g.n_players == D and g.feature_names == [f"x{j}" for j in range(D)]


def test_exact_and_estimated_values_and_efficiency():
    g = shapcam.TabularGame(predict, X0, BG, weights=WEIGHTS)
    exact = shapcam.exact_shapley(lambda m: np.stack([by_hand(S) for S in m]), D)
    full = shapcam.estimate_shapley(g, K=100)  # the budget covers every coalition
    assert full.stop_reason == "exact"
    np.testing.assert_allclose(full.values, exact.values, rtol=0, atol=1e-12)
    est = shapcam.estimate_shapley(g, K=64, sampler="stratified", seed=3)
    z = (est.values - exact.values) / np.where(est.stderr > 0, est.stderr, 1)
    assert np.abs(z).max() < 5
    f_x = predict(X0[None])[0]
    f_bg = (predict(BG) * (WEIGHTS / WEIGHTS.sum())[:, None]).sum(0)
    np.testing.assert_allclose(est.values.sum(0), f_x - f_bg, rtol=0, atol=1e-12)


def test_groups_are_one_player_each():
    groups = [[0, 1], [2], [3, 4]]
    g = shapcam.TabularGame(predict, X0, BG, groups=groups)
    assert g.n_players == 3 and g.feature_names == ["x0+x1", "x2", "x3+x4"]
    cols = np.array([0, 0, 1, 2, 2])
    same = shapcam.TabularGame(predict, X0, BG, groups=cols)
    res, res2 = shapcam.estimate_shapley(g, K=20), shapcam.estimate_shapley(same, K=20)
    np.testing.assert_array_equal(res.values, res2.values)

    def grouped(m):  # the 3-player game by hand: a group present = its columns present
        return np.stack([by_hand(S[cols], w=np.ones(R)) for S in m])

    exact = shapcam.exact_shapley(grouped, 3)
    np.testing.assert_allclose(res.values, exact.values, rtol=0, atol=1e-12)
    for bad in ([[0, 1], [1, 2, 3, 4]], [[0], [1]], [[0, 9]], np.array([0, 0, 2, 2, 2])):
        with pytest.raises(ValueError, match="groups"):
            shapcam.TabularGame(predict, X0, BG, groups=bad)


def test_link_and_one_output():
    from scipy.special import expit, logit

    prob = lambda X: expit(np.asarray(X) @ W[:, 0])  # noqa: E731 - [rows]
    g = shapcam.TabularGame(prob, X0, BG, link=logit)
    res = shapcam.estimate_shapley(g, K=100)
    assert res.values.shape == (D,)
    mean_bg = prob(BG).mean()
    assert res.values.sum() == pytest.approx(logit(prob(X0[None])[0]) - logit(mean_bg), abs=1e-12)


def test_pandas_frames_keep_their_columns():
    pd = pytest.importorskip("pandas")
    names = ["age", "income", "height", "weight", "score"]
    seen = []

    def f(frame):
        seen.append(list(frame.columns))
        return predict(frame.to_numpy())

    g = shapcam.TabularGame(f, pd.Series(X0, index=names), pd.DataFrame(BG, columns=names),
                            groups=[["age", "income"], ["height"], ["weight", "score"]])
    assert g.feature_names == ["age+income", "height", "weight+score"]
    res = shapcam.estimate_shapley(g, K=8)
    assert seen and all(c == names for c in seen)
    ref = shapcam.estimate_shapley(shapcam.TabularGame(predict, X0, BG, groups=[[0, 1], [2], [3, 4]]), K=8)
    np.testing.assert_array_equal(res.values, ref.values)


def test_torch_models_get_torch_rows():
    torch = pytest.importorskip("torch")
    Wt = torch.as_tensor(W)

    def f(rows):
        assert torch.is_tensor(rows) and rows.dtype == torch.float64
        return torch.tanh(rows @ Wt)

    g = shapcam.TabularGame(f, torch.as_tensor(X0), torch.as_tensor(BG))
    res = shapcam.estimate_shapley(g, K=100)
    ref = shapcam.exact_shapley(lambda m: np.stack([by_hand(S, w=np.ones(R), f=lambda X: np.tanh(X @ W))
                                                    for S in m]), D)
    np.testing.assert_allclose(np.asarray(res.values), ref.values, rtol=0, atol=1e-12)


def test_bad_input_is_named():
    cases = [(dict(x=X0[:3]), "x: expected one row"), (dict(background=BG[0]), "background"),
             (dict(weights=np.ones(R - 1)), "weights"), (dict(weights=-np.ones(R)), "weights"),
             (dict(x=np.full(D, np.nan)), "NaN")]
    for kw, msg in cases:
        args = dict(predict=predict, x=X0, background=BG)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            shapcam.TabularGame(**args)
    g = shapcam.TabularGame(lambda X: np.zeros((len(X), 2, 2)), X0, BG)
    with pytest.raises(ValueError, match="predict: returned shape"):
        shapcam.estimate_shapley(g, K=4)
    with pytest.raises(TypeError, match="predict"):
        shapcam.TabularGame("model", X0, BG)


def test_equals_shaps_exact_explainer():
    shap = pytest.importorskip("shap")
    f = lambda X: np.tanh(np.asarray(X) @ W[:, 0])  # noqa: E731
    masker = shap.maskers.Independent(BG, max_samples=R)
    theirs = shap.explainers.Exact(f, masker)(X0[None]).values[0]
    ours = shapcam.exact_shapley(lambda m: np.asarray(shapcam.TabularGame(f, X0, BG).evaluate_masks(m)), D)
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-10)


# --- interop ----------------------------------------------------------------------------------

def test_to_shap_carries_values_errors_and_names():
    shap = pytest.importorskip("shap")
    g = shapcam.TabularGame(lambda X: np.tanh(np.asarray(X) @ W[:, 0]), X0, BG,
                            groups=[[0, 1], [2], [3, 4]])
    res = shapcam.estimate_shapley(g, K=8, sampler="stratified")
    ex = res.to_shap(data=np.array([1.0, 2.0, 3.0]))
    assert isinstance(ex, shap.Explanation)
    np.testing.assert_array_equal(ex.values, res.values)
    np.testing.assert_array_equal(ex.error_std, res.stderr)
    assert ex.base_values == res.v_empty and list(ex.feature_names) == ["x0+x1", "x2", "x3+x4"]
    assert list(res.to_shap(feature_names=["a", "b", "c"]).feature_names) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="feature_names"):
        res.to_shap(feature_names=["a"])
    multi = shapcam.estimate_shapley(shapcam.TabularGame(predict, X0, BG), K=8).to_shap()
    assert multi.values.shape == (D, 3) and multi.base_values.shape == (3,)
    import matplotlib

    matplotlib.use("Agg")
    shap.plots.waterfall(ex, show=False)  # shap's own plots take it


def test_to_shapiq_is_order_one_with_the_baseline():
    pytest.importorskip("shapiq")
    g = shapcam.TabularGame(predict, X0, BG)
    res = shapcam.estimate_shapley(g, K=100)  # exact
    iv = res.to_shapiq(output=1)
    assert iv.index == "SV" and iv.max_order == 1 and iv.n_players == D and not iv.estimated
    for i in range(D):
        assert iv[(i,)] == pytest.approx(res.values[i, 1], abs=0)
    assert iv.baseline_value == pytest.approx(res.v_empty[1], abs=0)
    with pytest.raises(ValueError, match="output"):
        res.to_shapiq()
    est = shapcam.estimate_shapley(lambda m: np.asarray(m, float) @ np.arange(1.0, 13), 12, K=8,
                                   sampler="stratified")
    assert est.to_shapiq().estimated and est.to_shapiq()[(3,)] == pytest.approx(4.0)


def test_explain_rows_is_each_row_explained_alone():
    Xs = RNG.normal(size=(4, D))
    stacked = shapcam.explain_rows(predict, Xs, BG, K=16, sampler="stratified", seed=2)
    assert stacked.values.shape == (4, D, 3) and stacked.v_full.shape == (4, 3)
    for i in range(4):
        alone = shapcam.estimate_shapley(shapcam.TabularGame(predict, Xs[i], BG), K=16,
                                         sampler="stratified", seed=2)
        np.testing.assert_array_equal(stacked.values[i], alone.values)
        np.testing.assert_array_equal(stacked.stderr[i], alone.stderr)
        np.testing.assert_array_equal(stacked.v_empty[i], alone.v_empty)
    assert np.abs(stacked.efficiency_gap).max() < 1e-12
    # the default sampler, one output: [rows, players]; the same plan for every row
    one = shapcam.explain_rows(lambda X: np.tanh(np.asarray(X) @ W[:, 0]), Xs, BG, K=16)
    assert one.values.shape == (4, D) and one.sampler == "regression"
    alone = shapcam.estimate_shapley(shapcam.TabularGame(lambda X: np.tanh(np.asarray(X) @ W[:, 0]),
                                                         Xs[1], BG), K=16)
    np.testing.assert_allclose(one.values[1], alone.values, rtol=0, atol=1e-12)
    calls = []
    shapcam.explain_rows(lambda X: calls.append(len(X)) or np.zeros(len(X)), Xs, BG, K=4,
                         sampler="plain", batch_size=1000)
    assert calls and all(c % (4 * R) == 0 for c in calls)  # each call: every row's hybrids
    shap = pytest.importorskip("shap")
    ex = one.to_shap()
    assert isinstance(ex, shap.Explanation) and ex.values.shape == (4, D)
    np.testing.assert_array_equal(ex.data, Xs)
