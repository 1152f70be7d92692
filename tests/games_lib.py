"""Games with closed-form Shapley values, as mask -> value functions over NumPy batches [B, n]."""
import numpy as np


def additive(w):
    w = np.asarray(w, dtype=np.float64)
    return lambda m: np.asarray(m, dtype=np.float64) @ w


def unanimity(T, n):
    T = np.asarray(T)
    return lambda m: np.asarray(m)[:, T].all(1).astype(np.float64)


def symmetric(g):
    return lambda m: g(np.asarray(m).sum(1))


def glove(left, right):
    left, right = np.asarray(left), np.asarray(right)
    return lambda m: np.minimum(np.asarray(m)[:, left].sum(1), np.asarray(m)[:, right].sum(1)).astype(np.float64)


def weighted_majority(q, w):
    w = np.asarray(w, dtype=np.float64)
    return lambda m: ((np.asarray(m, dtype=np.float64) @ w) >= q).astype(np.float64)


def airport(c):
    c = np.asarray(c, dtype=np.float64)
    return lambda m: (np.asarray(m) * c[None, :]).max(1)


def airport_shapley(c):
    """Littlechild & Owen (1973): with costs sorted, phi_i = sum_{j<=i} (c_j - c_{j-1}) / (n - j)."""
    c = np.asarray(c, dtype=np.float64)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    n = len(c)
    inc = np.diff(np.concatenate([[0.0], cs])) / (n - np.arange(n))
    phi_sorted = np.cumsum(inc)
    phi = np.empty(n)
    phi[order] = phi_sorted
    return phi


def table_game(n, seed):
    """A random game: v(S) is an arbitrary table entry (no structure for the estimator to exploit)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=1 << n)
    table[0] = 0.0
    bits = 1 << np.arange(n)
    return lambda m: table[np.asarray(m).astype(np.int64) @ bits]


def brute_force_shapley(value_fn, n):
    """Average marginal contributions over all n! orders (an oracle independent of exact_shapley)."""
    from itertools import permutations

    phi = np.zeros(n)
    count = 0
    for order in permutations(range(n)):
        m = np.zeros((n + 1, n), dtype=bool)
        for t, p in enumerate(order):
            m[t + 1:, p] = True
        v = value_fn(m)
        for t, p in enumerate(order):
            phi[p] += v[t + 1] - v[t]
        count += 1
    return phi / count
