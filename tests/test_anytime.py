"""Anytime sampling (K=None with tol / rtol / max_evals / max_seconds), stop_reason, and resuming
a finished run bit for bit."""
import time

import numpy as np
import pytest

import shapcam
from games_lib import table_game

W = np.linspace(0.1, 1.0, 8)


def smooth(m):
    s = np.asarray(m, float) @ W
    return s ** 3 - 0.5 * s ** 2


def test_tol_stops_with_the_promised_error(engine):
    res = shapcam.estimate_shapley(smooth, 8, K=None, tol=0.08, seed=1, engine=engine)
    assert res.stop_reason == "tol" and res.stderr.max() <= 0.08
    assert res.n_samples >= 16  # min_samples before the rule may fire
    assert res.n_evals == 2 + res.n_permutations * 7 and res.n_permutations == 4 * res.n_samples
    looser = shapcam.estimate_shapley(smooth, 8, K=None, tol=0.5, seed=1, engine=engine)
    assert looser.n_samples < res.n_samples
    # where it stops does not depend on the batch size (checks at fixed sample counts)
    other = shapcam.estimate_shapley(smooth, 8, K=None, tol=0.08, seed=1, engine=engine, batch_size=5)
    np.testing.assert_array_equal(res.values, other.values)
    np.testing.assert_array_equal(res.stderr, other.stderr)


def test_rtol_and_k_as_a_cap():
    res = shapcam.estimate_shapley(smooth, 8, K=None, rtol=0.01, seed=2)
    spread = res.values.max() - res.values.min()
    assert res.stop_reason == "tol" and res.stderr.max() <= 0.01 * spread
    capped = shapcam.estimate_shapley(smooth, 8, K=40, tol=1e-9, seed=2)
    assert capped.stop_reason == "K" and capped.n_permutations == 40


@pytest.mark.parametrize("max_evals", [2 + 14, 2 + 14 * 5 + 13, 1000])
def test_max_evals_is_respected_exactly(max_evals):
    calls = []

    def counted(m):
        calls.append(len(m))
        return smooth(m)

    res = shapcam.estimate_shapley(counted, 8, K=None, max_evals=max_evals, seed=3, sampler="antithetic")
    assert res.stop_reason == "max_evals"
    assert sum(calls) == res.n_evals <= max_evals
    assert res.n_evals == 2 + ((max_evals - 2) // 14) * 14  # the last whole pair that fits
    with pytest.raises(ValueError, match="max_evals"):
        shapcam.estimate_shapley(smooth, 8, K=None, max_evals=15)


def test_max_seconds():
    def slow(m):
        time.sleep(0.002)
        return smooth(m)

    t = time.perf_counter()
    res = shapcam.estimate_shapley(slow, 8, K=None, max_seconds=0.3, seed=4, batch_size=14)
    assert res.stop_reason == "max_seconds" and time.perf_counter() - t < 5
    assert res.n_samples >= 16 and np.abs(res.efficiency_gap) < 1e-9


def test_resume_equals_one_run(engine):
    g = table_game(7, 3)
    first = shapcam.estimate_shapley(g, 7, K=20, seed=5, engine=engine)
    more = shapcam.estimate_shapley(g, 7, K=64, seed=5, engine=engine, resume=first)
    once = shapcam.estimate_shapley(g, 7, K=64, seed=5, engine=engine)
    np.testing.assert_array_equal(more.values, once.values)
    np.testing.assert_array_equal(more.stderr, once.stderr)
    assert more.n_permutations == 64 and more.n_evals == once.n_evals
    # tol: a run resumed from a looser tolerance stops where one run with the tighter one does
    a = shapcam.estimate_shapley(g, 7, K=None, tol=0.2, seed=5, engine=engine)
    b = shapcam.estimate_shapley(g, 7, K=None, tol=0.05, seed=5, engine=engine, resume=a)
    c = shapcam.estimate_shapley(g, 7, K=None, tol=0.05, seed=5, engine=engine)
    assert b.stop_reason == c.stop_reason == "tol" and b.n_samples == c.n_samples
    np.testing.assert_array_equal(b.values, c.values)


def test_resume_and_anytime_bad_input():
    g = table_game(6, 1)
    r = shapcam.estimate_shapley(g, 6, K=8, seed=0)
    with pytest.raises(ValueError, match="tol, rtol, max_evals or max_seconds"):
        shapcam.estimate_shapley(g, 6, K=None)
    with pytest.raises(ValueError, match="seed"):
        shapcam.estimate_shapley(g, 6, K=16, seed=1, resume=r)
    with pytest.raises(ValueError, match="had 6 players and (scalar values|1 output); this game "
                                         "has 7 players"):
        shapcam.estimate_shapley(table_game(7, 1), 7, K=16, seed=0, resume=r)
    with pytest.raises(ValueError, match="not the same game"):
        shapcam.estimate_shapley(lambda m: g(m) + 1.0, 6, K=16, seed=0, resume=r)
    with pytest.raises(ValueError, match="already has .*ask for a larger K or max_evals"):
        shapcam.estimate_shapley(g, 6, K=4, seed=0, resume=r)
    with pytest.raises(TypeError, match="ShapleyResult"):
        shapcam.estimate_shapley(g, 6, K=16, resume=shapcam.exact_shapley(g, 6))
    for bad in ({"tol": 0}, {"tol": -1.0}, {"rtol": float("nan")}, {"max_evals": 0},
                {"max_seconds": 0}, {"min_samples": 1}):
        with pytest.raises(ValueError):
            shapcam.estimate_shapley(g, 6, K=None, **dict({"tol": 0.1}, **bad))


def test_stopping_on_the_error_keeps_the_estimate_honest():
    """Stopping when the SE reaches tol must not bias the estimate or its coverage measurably:
    over 300 seeds on a random table game the mean estimate sits within 5 SE of the exact value
    and 95% intervals cover at [0.91, 0.97] (measured 0.949)."""
    g = table_game(9, 5)
    exact = shapcam.exact_shapley(g, 9).values
    est, hits = [], []
    for s in range(300):
        r = shapcam.estimate_shapley(g, 9, K=None, tol=0.1, seed=7000 + s)
        assert r.stop_reason == "tol" and r.stderr.max() <= 0.1
        est.append(r.values)
        hits.append(np.abs(r.values - exact) <= 1.96 * r.stderr)
    est = np.array(est)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * est.std(0, ddof=1) / np.sqrt(300))
    assert 0.91 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_anytime_works_for_fused_and_cell_games():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3))
    f = lambda b: np.tanh(b.reshape(len(b), -1).sum(1))
    res = shapcam.estimate_shapley(shapcam.MaskedInputGame(f, x, players=np.arange(9).reshape(3, 3)),
                                   K=None, tol=0.01, seed=0)
    assert res.stop_reason == "tol" and res.stderr.max() <= 0.01
    game = shapcam.CellTableGame.glm(rng.normal(size=6), rng.normal(size=6), 0.0,
                                     link=lambda z: 1 / (1 + np.exp(-z)))
    first = shapcam.estimate_shapley(game, K=10, seed=1)
    both = shapcam.estimate_shapley(game, K=30, seed=1, resume=first)
    np.testing.assert_array_equal(both.values, shapcam.estimate_shapley(game, K=30, seed=1).values)
