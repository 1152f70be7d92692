"""The exact oracle against closed forms and an independent brute force over all orders."""
import numpy as np
import pytest

import shapcam
from games_lib import (additive, airport, airport_shapley, brute_force_shapley, glove, symmetric,
                       table_game, unanimity, weighted_majority)


def test_additive():
    w = np.array([0.5, -1.0, 2.0, 3.25, 0.0])
    np.testing.assert_allclose(shapcam.exact_shapley(additive(w), 5).values, w, atol=1e-12)


def test_unanimity():
    phi = shapcam.exact_shapley(unanimity([1, 3, 4], 6), 6).values
    np.testing.assert_allclose(phi, [0, 1 / 3, 0, 1 / 3, 1 / 3, 0], atol=1e-12)


def test_symmetric():
    phi = shapcam.exact_shapley(symmetric(lambda s: s.astype(float) ** 2 + 1.0 * (s > 0)), 7).values
    np.testing.assert_allclose(phi, np.full(7, (49 + 1) / 7), atol=1e-12)


def test_glove_one_left_two_right():
    phi = shapcam.exact_shapley(glove([0], [1, 2]), 3).values
    np.testing.assert_allclose(phi, [2 / 3, 1 / 6, 1 / 6], atol=1e-12)


def test_weighted_majority_known_values():
    # [51; 50, 49, 1]: the big player is pivotal in 4 of 6 orders.
    phi = shapcam.exact_shapley(weighted_majority(51, [50, 49, 1]), 3).values
    np.testing.assert_allclose(phi, [2 / 3, 1 / 6, 1 / 6], atol=1e-12)


def test_airport():
    c = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    phi = shapcam.exact_shapley(airport(c), 8).values
    np.testing.assert_allclose(phi, airport_shapley(c), atol=1e-12)
    # The oracle itself: the closed form of c = (1, 2, 3) is (1/3, 1/3 + 1/2, 1/3 + 1/2 + 1).
    np.testing.assert_allclose(airport_shapley([1.0, 2.0, 3.0]), [1 / 3, 5 / 6, 11 / 6])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_over_orders(seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 10, size=6)
    for game in (weighted_majority(w.sum() / 2, w), table_game(6, seed)):
        np.testing.assert_allclose(shapcam.exact_shapley(game, 6).values, brute_force_shapley(game, 6),
                                   atol=1e-12)


def test_multi_output_and_batching():
    g1, g2 = table_game(9, 3), airport(np.arange(1.0, 10.0))
    both = lambda m: np.stack([g1(m), g2(m)], 1)
    phi = shapcam.exact_shapley(both, 9, batch_size=37).values
    np.testing.assert_allclose(phi[:, 0], shapcam.exact_shapley(g1, 9).values, atol=1e-12)
    np.testing.assert_allclose(phi[:, 1], shapcam.exact_shapley(g2, 9).values, atol=1e-12)


def test_efficiency_of_exact():
    g = table_game(10, 7)
    full, empty = g(np.ones((1, 10), bool))[0], g(np.zeros((1, 10), bool))[0]
    assert shapcam.exact_shapley(g, 10).values.sum() == pytest.approx(full - empty, abs=1e-12)


def test_refuses_large_games_with_reason():
    with pytest.raises(ValueError, match=r"2\^30"):
        shapcam.exact_shapley(lambda m: m.sum(1), 30)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_n(bad):
    with pytest.raises((ValueError, TypeError)):
        shapcam.exact_shapley(lambda m: m.sum(1), bad)


def test_non_finite_and_shape_errors():
    with pytest.raises(ValueError, match="non-finite"):
        shapcam.exact_shapley(lambda m: np.where(m.sum(1) == 2, np.nan, 1.0), 4)
    with pytest.raises(ValueError, match="shape"):
        shapcam.exact_shapley(lambda m: np.ones((len(m), 2, 2)), 4)
    with pytest.raises(TypeError, match="callable"):
        shapcam.exact_shapley(42, 4)


def test_exact_returns_a_shapley_result():
    w = np.array([1.0, -2.0, 0.5, 3.0])
    res = shapcam.exact_shapley(lambda m: m @ w + 7.0, 4)
    assert isinstance(res, shapcam.ShapleyResult)
    np.testing.assert_allclose(np.asarray(res), w, atol=1e-12)  # the array, as before
    assert np.all(res.stderr == 0) and res.stderr.shape == (4,)
    assert res.n_evals == 16 and res.n_permutations == 0
    assert res.v_empty == 7.0 and res.v_full == 7.0 + w.sum()
    assert abs(res.efficiency_gap) < 1e-12
    two = shapcam.exact_shapley(lambda m: np.stack([m @ w, -(m @ w)], 1), 4)
    assert two.values.shape == (4, 2) and two.v_full.shape == (2,)
    np.testing.assert_allclose(two.v_full, [w.sum(), -w.sum()])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_exact_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        shapcam.exact_shapley(lambda m: m.sum(1), 4, batch_size=bad)
