"""The regression sampler (shapcam/regression.py): unbiased and calibrated over 300 seeds on
closed-form games, exactly efficient, exact when the budget covers every coalition, reproducible
(engines, batch sizes, resume), stopping rules, every game type that values any coalition, and
the default's resolution."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shapcam
from shapcam import _engine, regression as rg
from shapcam.estimator import regression_applies
from shapcam.exact import exact_shapley
from shapcam.games import as_game
from games_lib import glove, table_game, unanimity

N = 10


def smooth(n=N):
    w = np.linspace(-0.6, 1.0, n)
    return lambda m: np.tanh(np.asarray(m, float) @ w) + 0.2 * (np.asarray(m, float) @ w) ** 3


GAMES = {
    "smooth": smooth(),
    "unanimity": unanimity([0, 3, 5, 8], N),
    "glove": glove([0, 1, 2, 3], [4, 5, 6, 7, 8, 9]),
    "table": table_game(N, 21),
}


def _run(g, n=N, **kw):
    kw.setdefault("K", None)
    kw.setdefault("max_evals", 200)
    return shapcam.estimate_shapley(g, n, sampler="regression", progress=False, **kw)


def test_plan_and_contract():
    """Border sizes always enumerated, deeper strata only when the budget gives them more
    samples than coalitions, everything when 2^n - 2 fits; pair sizes follow q by integer
    thresholds, as a pure function of (seed, index); a pair is a coalition and its complement."""
    p = rg.make_plan(30, None)
    assert p.enumerated == (1, 29) and p.mid == tuple(range(2, 29))
    assert rg.make_plan(10, 2**10 - 2).exact and not rg.make_plan(10, 2**10 - 3).exact
    deep = rg.make_plan(12, 2398)
    assert set(deep.enumerated) >= {1, 2, 10, 11} and 6 in deep.mid
    assert abs(deep.q.sum() - 1) < 1e-12 and np.allclose(deep.q, deep.q[::-1])
    s = rg.pair_sizes(5, 0, 200_000, p)
    freq = np.bincount(s, minlength=30)[list(p.mid)] / len(s)
    assert np.abs(freq - p.q).max() < 4 * np.sqrt(p.q.max() / len(s))
    np.testing.assert_array_equal(rg.pair_sizes(5, 1000, 1100, p), s[1000:1100])
    assert not np.array_equal(rg.pair_sizes(6, 0, 100, p), s[:100])
    m = rg.pair_masks(5, 10, 20, p, "reference")
    np.testing.assert_array_equal(m[1::2], ~m[0::2])
    np.testing.assert_array_equal(m[0::2].sum(1), s[10:20])
    np.testing.assert_array_equal(rg.pair_masks(5, 10, 20, p, "native"), m)
    e = rg.enumerated_masks(p, 0, p.n_enumerated)
    assert len({r.tobytes() for r in e}) == 60 and set(e.sum(1)) == {1, 29}
    np.testing.assert_array_equal(rg.enumerated_masks(p, 7, 41), e[7:41])


def test_pair_is_the_tail_of_a_plain_permutation():
    """pairs.h: the pair's smaller side is the players at the last min(s, n - s) positions of
    plain permutation j (so only that many Fisher-Yates steps are drawn), S_j that side when
    2 s <= n; every S_j of a size is equally likely (chi-square over the 12 subsets of size 2 of
    4 ... here: each player's frequency in S_j matches s / n)."""
    from shapcam import ops
    for n in (5, 7, 8, 17, 30, 33, 64, 65):
        p = rg.make_plan(n, None)
        j0, j1 = 3, 403
        perm = ops.permutations(5, j0, j1, n, antithetic=False, engine="reference")
        s = rg.pair_sizes(5, j0, j1, p)
        S = rg.pair_masks(5, j0, j1, p, "native")[0::2]
        for b in range(j1 - j0):
            t = min(s[b], n - s[b])
            tail = np.zeros(n, bool)
            tail[perm[b, n - t:]] = True
            np.testing.assert_array_equal(S[b], tail if 2 * s[b] <= n else ~tail)
        np.testing.assert_array_equal(rg.pair_packed(5, j0, j1, p, "native"), np.packbits(S, axis=1))
        np.testing.assert_array_equal(rg.pair_packed(5, j0, j1, p, "reference"), np.packbits(S, axis=1))
    p = rg.make_plan(9, None)
    S = rg.pair_sets(2, 0, 40_000, p, "native")
    s = S.sum(1)
    for size in (2, 4, 5, 7):
        freq = S[s == size].mean(0)
        assert np.abs(freq - size / 9).max() < 5 * np.sqrt(size / 9 / (s == size).sum()), (size, freq)


@pytest.mark.parametrize("n", [9, 12, 64])
def test_counts_past_a_word_of_pairs(n):
    """The native counts are bit-sliced, 64 pairs of a fold and size to a word: groups of more
    than 64 pairs (flushed when the word fills, and the rest at the end) count what the twin
    counts."""
    p = rg.make_plan(n, None)
    pk = rg.pair_packed(3, 0, 6000, p, "native")
    fit = rg.Fit(p, 3, "native", [0.0], [1.0])
    sa, sb = fit._new_stats(1), fit._new_stats(1)
    for st, eng in ((sa, "native"), (sb, "reference")):
        rg.pair_counts(pk, n, rg.FOLDS, st, eng)
    assert sa["C"].max() > 64 and sa["C"].sum() == 6000
    for key in ("N", "S1", "SL", "C", "CL"):
        np.testing.assert_array_equal(np.triu(sa[key]) if key == "N" else sa[key],
                                      np.triu(sb[key]) if key == "N" else sb[key])


@pytest.mark.parametrize("n", [5, 12, 30, 64, 70])
def test_native_ops_match_their_numpy_twins(n):
    """The estimate's per-pair ops (csrc/cpu/regression_cpu.cpp) give the bits of their NumPy
    twins: the residual moments, the Gram sums pair by pair (G and h, h alone) and the integer
    counts, with B not a multiple of the folds, several outputs, running sums to add to, and
    folds long enough for the ops' groups of rows."""
    rng = np.random.default_rng(n)
    p = rg.make_plan(n, None)
    F, k = rg.FOLDS, rg.size_terms(n)
    q = np.zeros(n + 1)
    q[list(p.mid)] = p.q
    sf = rg.size_features(n, np.arange(n + 1))
    for B, mw in ((37, 1), (5, 3), (300, 2), (1, 1), (501, 1)):  # 501: whole groups of 8 rows
        pk = rg.pair_packed(1, 0, B, p, "native")
        dY = rng.normal(size=(B, mw))
        beta, sterm = rng.normal(size=(F, n, mw)), rng.normal(size=(F, n + 1, mw))
        a = rg.pair_moments(pk, n, F, dY, beta, sterm, q, "native")
        b = rg.pair_moments(pk, n, F, dY, beta, sterm, q, "reference")
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        pp = n - 1 + k
        wt = rng.uniform(0.5, 2, n + 1)
        wt = wt + wt[::-1]  # a pair's weight is a function of s (n - s)
        G0, h0 = rng.normal(size=(F, pp, pp)), rng.normal(size=(F, pp, mw))
        up = np.triu_indices(pp)
        for with_G in (True, False):
            (Ga, ha), (Gb, hb) = (G0.copy(), h0.copy()), (G0.copy(), h0.copy())
            rg.pair_gram(pk, n, F, sf, wt, dY, Ga if with_G else None, ha, "native")
            rg.pair_gram(pk, n, F, sf, wt, dY, Gb if with_G else None, hb, "reference")
            np.testing.assert_array_equal(Ga[:, up[0], up[1]], Gb[:, up[0], up[1]])
            np.testing.assert_array_equal(ha, hb)
            assert not np.array_equal(ha, h0) and np.array_equal(Ga, G0) != with_G
        if n <= rg.COUNTS_MAX_PLAYERS:
            fit = rg.Fit(p, 1, "native", [0.0], [1.0])
            sa, sb = fit._new_stats(1), fit._new_stats(1)
            for st, eng in ((sa, "native"), (sb, "reference")):
                rg.pair_counts(pk, n, F, st, eng)
                rg.pair_counts(pk[:7], n, F, st, eng)
            for key in ("N", "S1", "SL", "C", "CL"):
                np.testing.assert_array_equal(np.triu(sa[key]) if key == "N" else sa[key],
                                              np.triu(sb[key]) if key == "N" else sb[key])
            assert sa["C"].sum() == B + min(B, 7)
            # the Gram matrices made of the counts are the ones summed pair by pair
            G = np.zeros((F, pp, pp))
            rg.pair_gram(pk, n, F, sf, wt, dY, G, np.zeros((F, pp, mw)), "native")
            rg.pair_gram(pk[:7], n, F, sf, wt, dY[:7], G, np.zeros((F, pp, mw)), "native")
            G = np.triu(G) + np.swapaxes(np.triu(G, 1), 1, 2)
            np.testing.assert_allclose(rg.counts_gram(sa, wt, sf), G, rtol=0, atol=1e-12 * np.abs(G).max())


@pytest.mark.parametrize("n", [2, 5, 12, 30])
def test_estimate_tail_matches_its_numpy_twin(n):
    """The estimate's tail (regression_tail_cpu: the folds' surrogates, the moments and the
    blocks' merged mean and M2) gives the bits of its NumPy twin, for one and several outputs,
    several blocks (a small PB) and a fold count past the pairs; and the twin is the pairs'
    estimates' mean and M2 computed pair by pair."""
    if _engine.native() is None:
        pytest.skip("no native engine")
    rng = np.random.default_rng(n)
    plan = rg.make_plan(n, None) if n > 2 else rg.Plan(2, (), (1,))
    F, k = rg.FOLDS, rg.size_terms(n)
    p = n - 1 + k
    X2 = rg._size_table(n, 2.0)
    for M, mw, PB in ((37, 1, 16), (5, 3, 8), (300, 2, 104), (3, 1, 8)):
        pk = rg.pair_packed(3, 0, M, plan, "native")
        P = rng.normal(size=(2 * M, mw))
        sol, D, Tb = rng.normal(size=(F, p, mw)), rng.normal(size=mw), rng.normal(size=(n, mw))
        args = (pk, P, M, n, F, k, PB, sol, D, Tb, len(plan.mid), X2, plan.qpos)
        a = rg.estimate_tail(*args, engine="native", m4=True)
        b = rg.estimate_tail(*args, engine="reference", m4=True)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(a[:2], rg.estimate_tail(*args, engine="native")):  # m4 not asked: the same
            np.testing.assert_array_equal(x, y)
        # pair by pair: psi_j = base_f + w(S_j) d_j / 2, fold f = (j mod PB) mod F
        beta = np.concatenate([sol[:, :n - 1], (D - sol[:, :n - 1].sum(1))[:, None]], 1)
        base = Tb[None] + len(plan.mid) * (n * beta - beta.sum(1, keepdims=True)) / (n * (n - 1))
        Z = np.unpackbits(pk, axis=1, count=n).astype(bool)
        s = Z.sum(1)
        f = (np.arange(M) % PB) % F
        sterm = np.einsum("sk,fko->fso", X2, sol[:, n - 1:])
        fit = np.where(Z[:, :, None], beta[f], -beta[f]).sum(1) + sterm[f, s]
        d = ((P[0::2] - P[1::2]) - fit) / plan.qpos[s][:, None]
        psi = base[f] + 0.5 * rg._weights_w(Z, s, n)[:, :, None] * d[:, None, :]
        np.testing.assert_allclose(a[0], psi.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a[1], ((psi - psi.mean(0)) ** 2).sum(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a[2], ((psi - psi.mean(0)) ** 4).sum(0), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n", [3, 12, 30])
def test_enumerated_terms_match_their_numpy_twin_in_any_chunks(n):
    """The enumerated rows' share (regression_enum_cpu) gives the bits of its NumPy twin, for one
    and several outputs and without hE; two chunks in order give the bits of one; and it is W^T Y
    and AW^T ((Y - v0) - last D) to rounding."""
    if _engine.native() is None:
        pytest.skip("no native engine")
    rng = np.random.default_rng(200 + n)
    plan = rg.make_plan(n, 4 * n * n)
    nE = plan.n_enumerated
    W, AW, last, _ = rg._enumerated_chunk(plan, 0, nE, nE)
    p = AW.shape[1]
    for mw in (1, 3):
        Y, v0, D = rng.normal(size=(nE, mw)), rng.normal(size=mw), rng.normal(size=mw)
        out = {}
        for eng in ("native", "reference"):
            for cut in (nE, nE // 3):
                Tb, hE = np.full((n, mw), 0.25), np.full((p, mw), -0.5)
                for a, b in ((0, cut), (cut, nE)):
                    rg.enumerated_terms(Y[a:b], W[a:b], AW[a:b], last[a:b], v0, D, Tb, hE, eng)
                Tb2 = np.full((n, mw), 0.25)
                rg.enumerated_terms(Y, W, AW, last, v0, D, Tb2, None, eng)
                np.testing.assert_array_equal(Tb, Tb2)
                out[eng, cut] = (Tb, hE)
        for key in out:
            for x, y in zip(out[key], out["native", nE]):
                np.testing.assert_array_equal(x, y)
        Tb, hE = out["native", nE]
        np.testing.assert_allclose(Tb, 0.25 + W.T @ Y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hE, -0.5 + AW.T @ ((Y - v0) - last[:, None] * D), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 12, 30])
def test_estimate_finish_matches_its_numpy_twin_and_its_steps(n):
    """The fused op regression_finish_cpu (the partial block's right sides, the folds' solves,
    the tail) gives the bits of its NumPy twin, with and without the whole blocks' right sides
    (hW) and for one and several outputs; and the twin is the steps it stands for: pair_gram,
    leave-one-fold-out sums, the solves, estimate_tail. A fold whose factor failed is solved by
    least squares in both engines (the native op is then not used)."""
    if _engine.native() is None:
        pytest.skip("no native engine")
    rng = np.random.default_rng(100 + n)
    plan = rg.make_plan(n, None) if n > 2 else rg.Plan(2, (), (1,))
    F, k = rg.FOLDS, rg.size_terms(n)
    p = n - 1 + k
    sf, X2, wt = rg._size_table(n), rg._size_table(n, 2.0), plan.pair_weights
    X = rng.normal(size=(F, 2 * p + 3, p))
    fac = rg._factor_psd(np.einsum("fki,fkj->fij", X, X), "native")
    assert fac[1] is None
    for M, W, mw, PB, whole in ((37, 0, 1, 16, False), (41, 32, 3, 16, True), (300, 208, 2, 104, True),
                                (3, 0, 1, 8, False), (16, 16, 2, 8, True)):
        pk = rg.pair_packed(5, 0, M, plan, "native")
        P = rng.normal(size=(2 * M, mw))
        D, Tb, hE = rng.normal(size=mw), rng.normal(size=(n, mw)), rng.normal(size=(p, mw))
        hW = rng.normal(size=(F, p, mw)) if whole else None
        args = (pk, P, M, W, n, F, k, PB, D, sf, wt, hE, hW, fac, Tb, len(plan.mid), X2, plan.qpos)
        a = rg.estimate_finish(*args, engine="native", m4=True)
        b = rg.estimate_finish(*args, engine="reference", m4=True)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        h = np.zeros((F, p, mw))
        rg.pair_gram(pk[W:M], n, F, sf, wt, rg._pair_dt(pk[W:M], P[2 * W:2 * M], n, D), None, h, "native")
        if whole:
            h = h + hW
        hs = hE[None] + h.sum(0)[None] - h
        c = rg.estimate_tail(pk, P, M, n, F, k, PB, rg.solve_factored(fac, hs, "native"), D, Tb,
                             len(plan.mid), X2, plan.qpos, "native", m4=True)
        for x, y in zip(a, c):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-12)
    U = fac[0].copy()
    U[2] = np.eye(p)  # unspecified where a factor failed: lstsq on Gb replaces its solution
    Gb = np.eye(p)[None] * 2.0
    bad = (U, np.array([2]), Gb)
    args = (pk, P, M, W, n, F, k, PB, D, sf, wt, hE, hW, bad, Tb, len(plan.mid), X2, plan.qpos)
    for x, y in zip(rg.estimate_finish(*args, engine="native", m4=True),
                    rg.estimate_finish(*args, engine="reference", m4=True)):
        np.testing.assert_array_equal(x, y)
        assert np.isfinite(x).all()


@pytest.mark.parametrize("n", [5, 12, 30, 64])
def test_partial_blocks_gram_summed_or_counted_agree(n):
    """A small partial block's Gram matrices summed pair by pair (Fit._partial_gram, chosen by
    _direct_gram) equal the counted ones (pair_counts, counts_gram) to rounding, in both engines
    (which give the same bits); the choice is a function of the block's size alone."""
    plan = rg.make_plan(n, None)
    for eng in ("native", "reference") if _engine.native() else ("reference",):
        fit = rg.Fit(plan, 4, eng, np.zeros(1), np.ones(1))
        B = 8 * 7 + 3
        direct = fit._partial_gram(0, B)
        stats = fit._new_stats(1)
        rg.pair_counts(rg.pair_packed(4, 0, B, plan, eng), n, rg.FOLDS, stats, eng)
        counted = fit._fold_gram(stats)[0]
        np.testing.assert_allclose(direct, counted, rtol=1e-12, atol=1e-12 * np.abs(counted).max())
        assert fit._direct_gram(1) and not fit._direct_gram(10 ** 9)
        if eng == "native":
            ref = rg.Fit(plan, 4, "reference", np.zeros(1), np.ones(1))._partial_gram(0, B)
            np.testing.assert_array_equal(direct, ref)


@pytest.mark.parametrize("p", [1, 2, 7, 33, 67])
def test_cholesky_ops_match_their_numpy_twins_and_solve(p):
    """The fit's factor and solve (csrc/cpu/regression_cpu.cpp) give the bits of their NumPy
    twins, for one and several outputs; they solve the ridged systems (to rounding, against
    LAPACK's LU); a fold that is not positive definite is flagged, and _factor_psd /
    solve_factored fall back to least squares for it alone."""
    if _engine.native() is None:
        pytest.skip("no native engine")
    rng = np.random.default_rng(p)
    X = rng.normal(size=(rg.FOLDS, 2 * p + 3, p))
    A = np.einsum("fki,fkj->fij", X, X)
    for mw in (1, 3):
        h = rng.normal(size=(rg.FOLDS, p, mw))
        (Ua, oka), (Ub, okb) = rg.cholesky(A, "native"), rg.cholesky(A, "reference")
        assert oka.all() and okb.all()
        np.testing.assert_array_equal(Ua, Ub)  # both triangles (the lower one mirrored)
        np.testing.assert_array_equal(Ua, np.swapaxes(Ua, 1, 2))
        xa, xb = rg.cholesky_solve(Ua, h, "native"), rg.cholesky_solve(Ub, h, "reference")
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_allclose(xa, rg._solve_psd(A, h), rtol=1e-9, atol=1e-12)
    bad = A.copy()
    bad[3] = -np.eye(p)  # negative definite: no factor
    h = rng.normal(size=(rg.FOLDS, p, 2))
    for eng in ("native", "reference"):
        assert rg.cholesky(bad, eng)[1].tolist() == [f != 3 for f in range(rg.FOLDS)]
        fac = rg._factor_psd(bad, eng)
        assert fac[1].tolist() == [3]
        x = rg.solve_factored(fac, h, eng)
        np.testing.assert_allclose(x[3], -h[3], rtol=1e-12)
        np.testing.assert_allclose(x[:3], rg._solve_psd(A[:3], h[:3]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GAMES))
def test_unbiased_and_calibrated_over_300_seeds(name):
    """The mean over 300 seeds is within 5 standard errors of the exact values for every player,
    and interval(0.95) covers the exact value 91-97% of the (seed, player) pairs."""
    g = GAMES[name]
    exact = np.asarray(exact_shapley(g, N))
    est, cover = [], []
    for seed in range(300):
        r = _run(g, seed=seed)
        est.append(r.values)
        lo, hi = r.interval(0.95)
        live = r.stderr > 0
        cover.append(((lo - 1e-12 <= exact) & (exact <= hi + 1e-12))[live])
    est = np.array(est)
    se = est.std(0, ddof=1) / np.sqrt(len(est))
    z = np.abs(est.mean(0) - exact) / np.maximum(se, 1e-15)
    assert z.max() < 5, (name, z)
    cov = np.concatenate(cover).mean()
    assert 0.91 <= cov <= 0.97, (name, cov)


@pytest.mark.parametrize("budget", [40, 120, 500, 1100])
def test_efficiency_and_exactness(budget):
    g = table_game(N, budget)
    r = _run(g, max_evals=budget, seed=3)
    full, empty = g(np.ones((1, N), bool))[0], g(np.zeros((1, N), bool))[0]
    assert abs(r.values.sum() - (full - empty)) < 1e-12
    assert r.n_evals <= budget and r.sampler == "regression"
    if budget >= 2**N:
        assert r.stop_reason == "exact" and np.all(r.stderr == 0)
        np.testing.assert_allclose(r.values, np.asarray(exact_shapley(g, N)), atol=1e-12)
    else:
        assert r.stop_reason == "max_evals" and np.all(r.stderr > 0)


def test_size_features_are_odd_legendre():
    from numpy.polynomial import legendre
    n = 30
    s = np.arange(1, n)
    x = (2.0 * s - n) / n
    want = np.stack([legendre.legval(x, [0] * d + [1]) for d in (1, 3, 5, 7)], 1)
    np.testing.assert_allclose(rg.size_features(n, s), want, atol=1e-13)
    assert [rg.size_terms(n) for n in (2, 3, 4, 5, 9, 10, 100)] == [0, 1, 1, 2, 4, 4, 4]


def test_additive_plus_size_function_is_exact_from_sampled_pairs():
    """v = additive + an odd polynomial of degree <= 7 in the size + any even function of the
    size: the surrogate takes all of v(S) - v(N minus S), so every pair's estimate is exact and
    the standard error 0 (without the size terms the residual x^5 would be sampled)."""
    n = 20
    w = np.random.default_rng(4).normal(size=n)

    def v(m):
        x = (2.0 * m.sum(1) - n) / n
        return m @ w + x**5 - 2 * x**3 + 0.3 * x**2 + np.cos(3 * x)

    r = shapcam.estimate_shapley(v, n, K=None, max_evals=40 * n, seed=1, sampler="regression",
                                 progress=False)
    assert r.stop_reason == "max_evals" and r.n_samples > 100
    # a size function has equal Shapley values for all players: (v_size(N) - v_size(0)) / n
    size_part = (1 - 2 + 0.3 + np.cos(3) - (-1 + 2 + 0.3 + np.cos(-3))) / n
    np.testing.assert_allclose(r.values, w + size_part, atol=1e-9)
    assert r.stderr.max() < 1e-9


def test_engines_bit_identical_past_the_counts():
    """n > COUNTS_MAX_PLAYERS: the fit sums its Gram matrices in float64 pair by pair, and the
    engines still agree to the bit."""
    n = rg.COUNTS_MAX_PLAYERS + 3
    w = np.random.default_rng(2).normal(size=n)
    g = lambda m: np.tanh(np.asarray(m, float) @ w)  # noqa: E731
    a = _run(g, n, seed=3, max_evals=12 * n, engine="reference")
    b = _run(g, n, seed=3, max_evals=12 * n, engine="native")
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    assert np.isfinite(a.values).all() and (a.stderr > 0).all()


def test_engines_batch_sizes_and_outputs_bit_identical():
    # a table game: its values do not depend on how coalitions are batched (a matmul's can)
    g = GAMES["table"]
    ref = _run(g, seed=11, engine="reference", batch_size=7)
    for kw in (dict(engine="native"), dict(batch_size=1), dict(batch_size=100_000)):
        r = _run(g, seed=11, **kw)
        np.testing.assert_array_equal(r.values, ref.values)
        np.testing.assert_array_equal(r.stderr, ref.stderr)
    # m outputs at once: each output's values are those of its own run
    two = lambda m: np.stack([g(m), 2 * g(m) + 1], 1)  # noqa: E731
    r2 = _run(two, seed=11)
    assert r2.values.shape == (N, 2)
    np.testing.assert_allclose(r2.values[:, 0], ref.values, rtol=0, atol=1e-13)
    np.testing.assert_allclose(r2.values[:, 1], 2 * ref.values, rtol=0, atol=1e-12)


def test_resume_is_one_run():
    n = 30
    g = unanimity(list(range(0, 30, 3)), n)
    one = _run(g, n, K=40, max_evals=None, seed=2)
    first = _run(g, n, K=20, max_evals=None, seed=2)
    assert first.state["plan"] == one.state["plan"]
    more = shapcam.estimate_shapley(g, n, K=40, seed=2, resume=first, progress=False)
    assert more.sampler == "regression"
    np.testing.assert_array_equal(more.values, one.values)
    np.testing.assert_array_equal(more.stderr, one.stderr)
    assert more.n_evals == one.n_evals and more.n_samples == one.n_samples
    with pytest.raises(ValueError, match="seed"):
        shapcam.estimate_shapley(g, n, K=40, seed=3, resume=first, sampler="regression")
    with pytest.raises(ValueError, match="sampler"):
        shapcam.estimate_shapley(g, n, K=40, seed=2, resume=first, sampler="stratified")


def test_stopping_rules():
    g = GAMES["smooth"]
    r = _run(g, max_evals=None, tol=0.02, seed=1)
    assert r.stop_reason == "tol" and r.stderr.max() <= 0.02 and r.n_samples >= 16
    # a tighter tol needs more pairs
    r2 = _run(g, max_evals=None, tol=0.005, seed=1)
    assert r2.n_samples > r.n_samples and r2.stderr.max() <= 0.005
    cap = _run(g, max_evals=333, tol=1e-9, seed=1)
    assert cap.stop_reason == "max_evals" and cap.n_evals <= 333 and cap.n_evals >= 332
    t = _run(g, max_evals=None, max_seconds=0.05, seed=1)
    assert t.stop_reason == "max_seconds"
    with pytest.raises(ValueError, match="budget"):
        _run(g, max_evals=20)


def test_tol_stopping_does_not_bias():
    """Stopping on the SE: the mean over 200 seeds stays within 5 SE of the exact values."""
    g = GAMES["glove"]
    exact = np.asarray(exact_shapley(g, N))
    est = np.array([_run(g, max_evals=None, tol=0.03, seed=s).values for s in range(200)])
    z = np.abs(est.mean(0) - exact) / (est.std(0, ddof=1) / np.sqrt(200) + 1e-15)
    assert z.max() < 5


def test_game_types_agree():
    """MaskGame, MaskedInputGame and CellTableGame value the same coalitions alike, so the
    sampler gives the same estimate on each."""
    rng = np.random.default_rng(0)
    w, x, b = rng.normal(size=N), rng.normal(size=N), rng.normal(size=N)
    link = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    mask_fn = lambda m: link(np.where(m, x, b) @ w + 0.3)  # noqa: E731
    masked = shapcam.MaskedInputGame(lambda X: link(X @ w + 0.3), x.copy(), baseline=b)
    cell = shapcam.CellTableGame.glm(w, x, b, intercept=0.3, link=link)
    M = rg.pair_masks(1, 0, 50, rg.make_plan(N, None))
    for game in (masked, cell):
        np.testing.assert_allclose(np.asarray(game.evaluate_masks(M)).reshape(-1), mask_fn(M),
                                   rtol=0, atol=1e-12)
    ref = _run(mask_fn, seed=4)
    for game in (masked, cell):
        r = shapcam.estimate_shapley(game, K=None, max_evals=200, seed=4, sampler="regression")
        np.testing.assert_allclose(r.values, ref.values, rtol=0, atol=1e-10)
    # players as a map over a 2-D input with channels (the Shap-CAM layout)
    A = rng.normal(size=(3, 2, 5)).astype(np.float32)
    players = np.arange(10).reshape(2, 5)
    g2 = shapcam.MaskedInputGame(lambda X: X.reshape(X.shape[0], -1).sum(1), A, players=players)
    m = rg.pair_masks(2, 0, 4, rg.make_plan(10, None))
    want = np.where(m[:, players][:, None], A[None], 0).reshape(len(m), -1).sum(1)
    np.testing.assert_allclose(g2.evaluate_masks(m), want, rtol=1e-5)


def test_default_resolution_and_errors():
    g = GAMES["smooth"]
    assert shapcam.estimator.DEFAULT_SAMPLER == "regression"
    assert shapcam.estimate_shapley(g, N, K=16).sampler == "regression"
    assert shapcam.estimate_shapley(g, N, K=16, antithetic=False).sampler == "plain"
    trunc = shapcam.TruncatedGame(g, N, tol=0.0)
    assert shapcam.estimate_shapley(trunc, K=16).sampler == "stratified"
    with pytest.raises(ValueError, match="permutation prefixes"):
        shapcam.estimate_shapley(trunc, K=16, sampler="regression")
    big = lambda m: np.asarray(m, float).sum(1)  # noqa: E731
    assert regression_applies(as_game(big, 2000), 4, None, None) is not None
    assert shapcam.estimate_shapley(big, 2000, K=2).sampler == "stratified"
    # too small a budget for the borders: the default falls back, an explicit request explains
    assert shapcam.estimate_shapley(g, N, K=1).sampler == "stratified"
    with pytest.raises(ValueError, match="border"):
        shapcam.estimate_shapley(g, N, K=1, sampler="regression")
    with pytest.raises(ValueError, match="sampler"):
        shapcam.estimate_shapley(g, N, K=16, sampler="kernel")
    nan = lambda m: np.where(np.asarray(m).sum(1) == 5, np.nan, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="non-finite"):
        _run(nan)


def test_calls_hold_at_most_batch_size_and_the_borders_share_one():
    """Every value_fn call holds at most batch_size coalitions, whatever batch_size, with the
    same estimate; where they fit, the last enumerated border coalitions and the first pairs go in
    one call (a short run: the endpoints' call and one more); a non-finite value in that call is
    still refused, naming the coalition."""
    g = GAMES["table"]
    ref = None
    for bs in (1, 3, 2 * N - 1, 2 * N, 2 * N + 1, 2 * N + 2, 10_000):
        sizes = []

        def f(m, sizes=sizes):
            sizes.append(len(m))
            return g(m)

        r = _run(f, seed=2, batch_size=bs)
        assert max(sizes) <= max(bs, 2) and sum(sizes) == r.n_evals, (bs, sizes)
        if ref is None:
            ref = r
        np.testing.assert_array_equal(r.values, ref.values)
        np.testing.assert_array_equal(r.stderr, ref.stderr)
    assert sizes == [2, r.n_evals - 2]
    single = lambda m: np.where(np.asarray(m).sum(1) == 1, np.inf, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="non-finite.*enumerated"):
        _run(single)


def test_interval_dof_follows_the_pairs_kurtosis():
    """The regression interval's degrees of freedom: M - 1 for normal pairs, fewer for
    heavy-tailed ones (Satterthwaite on the pooled kurtosis), never more than M - 1 nor fewer than
    1; a result carries them and interval() uses them (permutation samplers: n_samples - 1)."""
    rng = np.random.default_rng(0)
    M = 200
    normal = rng.normal(size=(M, 6, 1))
    heavy = rng.standard_t(3, size=(M, 6, 1))
    mom = lambda x: (((x - x.mean(0)) ** 2).sum(0), ((x - x.mean(0)) ** 4).sum(0))  # noqa: E731
    assert rg.interval_dof(*mom(normal), M) >= 0.8 * (M - 1)
    assert rg.interval_dof(*mom(heavy), M) < 0.5 * (M - 1)
    assert rg.interval_dof(*mom(heavy[:3]), 3) in (1, 2)
    assert rg.interval_dof(np.zeros((6, 1)), np.zeros((6, 1)), M) == M - 1  # no spread at all
    assert rg.interval_dof(np.ones((6, 1)), np.ones((6, 1)), 1) is None
    g = GAMES["smooth"]
    r = _run(g, seed=3)
    assert r.dof is not None and 1 <= r.dof <= r.n_samples - 1
    from shapcam.estimator import t_quantile
    lo, hi = r.interval(0.95)
    np.testing.assert_allclose(hi - r.values, t_quantile(0.975, r.dof) * r.stderr, rtol=1e-12)
    import pickle
    for eng in ("native", "reference") if _engine.native() else ("reference",):
        r2 = _run(g, seed=3, engine=eng)
        assert pickle.loads(pickle.dumps(r2)).dof == r2.dof == r.dof
    p = shapcam.estimate_shapley(g, N, 8, sampler="stratified")
    assert p.dof == p.n_samples - 1
    np.testing.assert_allclose(p.interval(0.95)[1] - p.values,
                               t_quantile(0.975, p.n_samples - 1) * p.stderr, rtol=1e-12)


def test_two_players_and_one():
    g = lambda m: np.asarray(m, float) @ np.array([1.0, 2.0]) + np.prod(m, 1)  # noqa: E731
    r = _run(g, 2, max_evals=10)
    np.testing.assert_allclose(r.values, [1.5, 2.5], atol=1e-14)
    assert r.stop_reason == "exact"
    one = shapcam.estimate_shapley(lambda m: np.asarray(m, float)[:, 0] * 3, 1, K=4)
    np.testing.assert_allclose(one.values, [3.0])


@pytest.mark.skipif(not __import__("shapcam._engine", fromlist=["x"]).cuda_built()
                    or not pytest.importorskip("torch").cuda.is_available(), reason="needs CUDA")
def test_device_games_match_host():
    import torch

    g = GAMES["smooth"]
    w = torch.tensor(np.linspace(-0.6, 1.0, N), device="cuda")

    def dev_fn(m):
        s = m.to(torch.float64) @ w
        return torch.tanh(s) + 0.2 * s ** 3

    host = _run(g, seed=5)
    dev = shapcam.estimate_shapley(dev_fn, N, K=None, max_evals=200, seed=5, device="cuda",
                                   sampler="regression")
    assert dev.values.is_cuda
    np.testing.assert_allclose(dev.values.cpu().numpy(), host.values, rtol=0, atol=1e-12)


@pytest.mark.skipif(not __import__("shapcam._engine", fromlist=["x"]).cuda_built()
                    or not pytest.importorskip("torch").cuda.is_available(), reason="needs CUDA")
def test_device_masked_input_and_cell_games():
    """MaskedInputGame and CellTableGame with their data on the GPU value arbitrary coalitions as
    their host twins do, so the sampler's estimates agree."""
    import torch

    rng = np.random.default_rng(1)
    w, x, b = rng.normal(size=N), rng.normal(size=N), rng.normal(size=N)
    wt = torch.tensor(w, device="cuda")
    masked_h = shapcam.MaskedInputGame(lambda X: np.tanh(X @ w), x.copy(), baseline=b)
    masked_d = shapcam.MaskedInputGame(lambda X: torch.tanh(X @ wt), torch.tensor(x, device="cuda"),
                                       baseline=torch.tensor(b, device="cuda"))
    cell_h = shapcam.CellTableGame.glm(w, x, b, link=np.tanh)
    tables = torch.tensor(np.asarray(cell_h.tables), device="cuda")
    cell_d = shapcam.CellTableGame(tables, None, lambda z: torch.tanh(z)[:, 0],
                                   z_empty=torch.tensor(np.asarray(cell_h.z_empty), device="cuda"))
    for host, dev in ((masked_h, masked_d), (cell_h, cell_d)):
        h = shapcam.estimate_shapley(host, K=None, max_evals=200, seed=6, sampler="regression")
        d = shapcam.estimate_shapley(dev, K=None, max_evals=200, seed=6, sampler="regression")
        assert d.values.is_cuda and d.sampler == "regression"
        np.testing.assert_allclose(d.values.cpu().numpy(), h.values, rtol=0, atol=1e-10)


def test_shapcam_regression_incremental_equals_fused():
    """ShapCAM(sampler="regression"): the incremental head (CellTableGame.evaluate_masks) and the
    fused masked-input path value the same coalitions, so the maps agree."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    inc = shapcam.ShapCAM(model, "layer4", K=8, sampler="regression", incremental=True)(x)
    fused = shapcam.ShapCAM(model, "layer4", K=8, sampler="regression", incremental=False)(x)
    assert torch.isfinite(inc).all() and inc.abs().max() > 0
    torch.testing.assert_close(inc, fused, rtol=1e-4, atol=1e-5)


def test_fit_cache_gives_the_bits_of_a_fresh_fit():
    """Fit keeps the enumerated part and the whole blocks' Gram matrices between calls (an
    anytime run asks at growing M); at any M, up or down, it equals a fresh Fit's estimate."""
    n, seed = 9, 4
    w = np.random.default_rng(1).normal(size=n)

    def v(m):
        m = np.asarray(m, dtype=np.float64)
        return np.tanh(m @ w)[:, None] + 0.1 * (m @ w)[:, None] ** 2

    plan = rg.make_plan(n, 400)
    assert not plan.exact
    E = v(rg.enumerated_masks(plan, 0, plan.n_enumerated))
    M_max = 3 * rg.Fit(plan, seed, "reference", [0.0], [0.0]).pair_block(1) + 5
    P = v(rg.pair_masks(seed, 0, M_max, plan, "reference"))
    v0, vN = v(np.zeros((1, n), bool))[0], v(np.ones((1, n), bool))[0]
    kept = rg.Fit(plan, seed, "reference", v0, vN)
    for M in (17, M_max - 3, M_max, 40, M_max - 1):
        a = kept.estimate(E, P[:2 * M], M)
        b = rg.Fit(plan, seed, "reference", v0, vN).estimate(E, P[:2 * M], M)
        for x, y in zip((a[0],) + a[1][:2], (b[0],) + b[1][:2]):
            np.testing.assert_array_equal(x, y)
        assert a[1][2] == b[1][2] == M


def test_design_cache_gives_the_bits_of_a_fresh_run(monkeypatch):
    """A run with an earlier run's engine, seed and plan takes its pairs' coalitions and the fit's
    counts from rg.design_cache; each result is the bits of a run without the cache: a run past a
    whole block of the fit, an anytime run (whole blocks counted as they fill), a resumed run, a
    game that writes into its masks, the other engine (kept apart), a cache too small to hold
    everything, and n past the counts (only the coalitions kept)."""
    n = 16
    w = np.random.default_rng(5).normal(size=n)

    def g(m):  # each row's sum in order: a row's bits do not depend on its batch (BLAS's may)
        z = np.cumsum(np.where(m, w, 0.0), axis=1)[:, -1]
        return np.tanh(z) + 0.1 * z ** 2

    def scribble(m):
        out = g(m)
        m[:] = ~m  # the next batch's masks must not be these
        return out

    pb = rg.Fit(rg.make_plan(n, 10_000), 0, "native", [0.0], [0.0]).pair_block(1)
    cases = [
        (g, n, dict(K=1024)),  # ~7600 pairs: one whole block of pb and a partial one
        (g, n, dict(K=None, max_evals=14_000, tol=1e-6)),  # checks at growing M across the block
        (scribble, n, dict(K=300)),
        (g, n, dict(K=300, engine="reference")),
    ]
    assert 1024 * (n - 1) // 2 > pb
    wide = rg.COUNTS_MAX_PLAYERS + 2
    w2 = np.random.default_rng(6).normal(size=wide)
    cases.append((lambda m: np.tanh(np.asarray(m, float) @ w2), wide, dict(K=8)))
    for game, nn, kw in cases:
        kw = dict(dict(seed=7, max_evals=None, progress=False, sampler="regression"), **kw)
        rg.design_cache.clear()
        first = shapcam.estimate_shapley(game, nn, **kw)
        assert rg.design_cache.nbytes == 0  # a key is kept from its second request on
        second = shapcam.estimate_shapley(game, nn, **kw)
        assert rg.design_cache.nbytes > 0 and rg.design_cache.hits == 0
        again = shapcam.estimate_shapley(game, nn, **kw)
        assert rg.design_cache.hits > 0
        with monkeypatch.context() as mp:
            mp.setattr(rg.design_cache, "limit", 0)
            fresh = shapcam.estimate_shapley(game, nn, **kw)
        for r in (second, again, fresh):
            np.testing.assert_array_equal(r.values, first.values)
            np.testing.assert_array_equal(r.stderr, first.stderr)
            assert r.n_evals == first.n_evals and r.stop_reason == first.stop_reason
    # the engines keep their own: a native run after a reference one draws its own pairs
    rg.design_cache.clear()
    for _ in range(2):
        shapcam.estimate_shapley(g, n, 300, seed=7, engine="reference", progress=False)
    hits = rg.design_cache.hits
    nat = shapcam.estimate_shapley(g, n, 300, seed=7, engine="native", progress=False)
    assert rg.design_cache.hits == hits
    # resume after runs that filled the cache: still one run's bits
    one = shapcam.estimate_shapley(g, n, 300, seed=7, progress=False)
    first = shapcam.estimate_shapley(g, n, 150, seed=7, progress=False)
    assert first.state["plan"] == one.state["plan"]
    more = shapcam.estimate_shapley(g, n, 300, seed=7, resume=first, progress=False)
    np.testing.assert_array_equal(more.values, one.values)
    np.testing.assert_array_equal(more.stderr, one.stderr)
    np.testing.assert_array_equal(one.values, nat.values)
    # a small cache: bounded, and the same bits
    ref = shapcam.estimate_shapley(g, n, 1024, seed=7, progress=False)
    with monkeypatch.context() as mp:
        mp.setattr(rg.design_cache, "limit", 300_000)
        rg.design_cache.clear()
        for i in range(3):
            r = shapcam.estimate_shapley(g, n, 1024, seed=7, progress=False)
            assert (0 if i == 0 else 1) <= rg.design_cache.nbytes <= 300_000
            np.testing.assert_array_equal(r.values, ref.values)
            np.testing.assert_array_equal(r.stderr, ref.stderr)
    rg.design_cache.clear()


def test_design_cache_keeps_only_what_is_asked_for_again():
    """Runs that never repeat a seed keep nothing; the cache stays within its limit and its
    remembered keys within SEEN_KEYS."""
    rg.design_cache.clear()
    g = smooth(20)
    for seed in range(6):
        shapcam.estimate_shapley(g, 20, 64, seed=seed, progress=False)
    assert rg.design_cache.nbytes == 0 and rg.design_cache.hits == 0
    c = rg.DesignCache(1000)
    c.SEEN_KEYS = 3
    for k in range(10):
        assert c.get(k) is None
    assert len(c._seen) == 3 and not c._admit
    assert c.get(9) is None and c.admits(9)  # asked for again
    c.put(9, np.zeros(10), 80)
    c.put(8, np.zeros(10), 80)  # not asked for again: not kept
    assert c.nbytes == 80 and c.get(8) is None and c.get(9) is not None
    c.put(9, np.zeros(200), 1600)  # over the limit: not kept, and the old value is gone
    assert c.nbytes == 0 and c.get(9) is None
    # a row store grows by what reaches past its end without a gap (a shorter run's rows first)
    rows = np.arange(40, dtype=np.uint8).reshape(10, 4)
    c = rg.DesignCache(1000)
    assert c.rows("r", 0, 2) is None and c.rows("r", 0, 2) is None
    c.extend("r", 0, rows[:3])
    c.extend("r", 1, rows[1:6])
    c.extend("r", 8, rows[8:])  # a gap: not kept
    np.testing.assert_array_equal(c.rows("r", 0, 6), rows[:6])
    assert c.rows("r", 0, 7) is None
    with pytest.raises(ValueError):
        c.rows("r", 0, 6)[0, 0] = 1  # read-only
    rg.design_cache.clear()


def test_design_cache_row_store_past_its_limit():
    """A row store that would outgrow the limit is dropped before its buffer is allocated."""
    c = rg.DesignCache(100)
    rows = np.arange(160, dtype=np.uint8).reshape(40, 4)
    c.rows("r", 0, 1), c.rows("r", 0, 1)
    c.extend("r", 0, rows[:20])  # 80 bytes: kept
    assert c.nbytes == 80
    c.extend("r", 20, rows[20:])  # would be 160: dropped
    assert c.nbytes == 0 and c.rows("r", 0, 1) is None
    c.extend("r", 20, rows[20:])  # a gap now: nothing
    assert c.nbytes == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_design_cache_in_a_child_forked_while_its_lock_was_held():
    import os

    rg.design_cache._lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: a run must not wait on the parent's lock
            try:
                r = shapcam.estimate_shapley(smooth(), N, 64, progress=False)
                os._exit(0 if np.isfinite(r.values).all() else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    finally:
        rg.design_cache._lock.release()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _vector_and_scalar(code):
    """What code prints (split in words) with the CPU ops' AVX2 paths, where the CPU has AVX2, and
    with their scalar loops (SHAPCAM_NO_AVX2=1), each in a process of its own."""
    if _engine.native() is None:
        pytest.skip("no native engine")
    outs = []
    for extra in ({}, {"SHAPCAM_NO_AVX2": "1"}):
        env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                             text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(res.stdout.split())
    return outs


def test_vector_and_scalar_pair_loops_give_the_same_bits():
    """The per-pair loops' AVX2 path (csrc/cpu/select_add.h, taken where the CPU has AVX2) and
    their scalar loops (SHAPCAM_NO_AVX2=1) give the same estimates bit for bit: several n (a
    partial last vector of players, more than one byte of them), outputs, a whole block of pairs
    and the groups of 16, 8 and 1 rows."""
    outs = _vector_and_scalar("""
        import numpy as np, shapcam
        for n, mw, K in ((5, 1, 40), (12, 1, 64), (20, 3, 50), (30, 1, 300), (33, 2, 200), (64, 1, 90)):
            w = np.random.default_rng(n).normal(size=(n, mw))
            f = lambda m, w=w: np.tanh(m @ w)
            r = shapcam.estimate_shapley(f, n, K, sampler="regression", engine="native", seed=3)
            print(np.concatenate([r.values.ravel(), r.stderr.ravel()]).tobytes().hex())
    """)
    assert len(outs[0]) == 6 and outs[0] == outs[1]


def test_vector_and_scalar_pair_draws_give_the_same_sets():
    """The pairs drawn 8 at a time with AVX2 (csrc/cpu/pairs_x8.h: Philox 8 counters a vector,
    the Fisher-Yates swaps composed in registers; n <= 64) and one at a time (pairs.h; without
    AVX2) are the same sets: n around the bytes' and the vectors' edges, counters past 2^32 and
    near 2^63, runs of pairs that end inside a group of 8."""
    outs = _vector_and_scalar("""
        import hashlib
        from shapcam import regression as rg
        for n in (3, 4, 5, 7, 8, 9, 15, 16, 17, 30, 31, 32, 33, 48, 63, 64, 65):
            plan = rg.make_plan(n, None)
            if not plan.mid:
                continue
            for seed, j0, B in ((5, 0, 1001), (2**64 - 1, 2**32 - 5, 42), (123, 2**63 - 50, 49),
                                (7, 3, 1), (8, 0, 9)):
                m, pk = rg.pair_masks(seed, j0, j0 + B, plan, "native", packed=True)
                print(n, j0, hashlib.sha256(m.tobytes() + pk.tobytes()).hexdigest())
    """)
    assert len(outs[0]) == 3 * 80 and outs[0] == outs[1]


def test_pair_masks_stay_in_their_rows():
    """The draw writes a mask row 8 bytes a store, the last one running into the next row, which
    is written after it (csrc/cpu/regression_cpu.cpp, write_pair): nothing lands past the last
    row, and every row is the reference engine's, whatever n and however many pairs (groups of
    8 and a partial last one)."""
    mod = _engine.native()
    if mod is None:
        pytest.skip("no native engine")
    for n in range(3, 71):
        plan = rg.make_plan(n, None)
        if not plan.mid:
            continue
        for B in (1, 2, 7, 8, 9, 17):
            buf = np.full((2 * B + 2) * n, 0xAA, np.uint8)
            out = buf[:2 * B * n].view(bool).reshape(2 * B, n)
            mod.regression_pairs_cpu(11, 5, 5 + B, n, plan.thresholds, rg._mid_array(plan), out,
                                     None, None)
            assert (buf[2 * B * n:] == 0xAA).all(), (n, B)
            np.testing.assert_array_equal(out.view(np.uint8) != 0, rg.pair_masks(11, 5, 5 + B, plan, "reference"))
            assert set(np.unique(out.view(np.uint8))) <= {0, 1}
