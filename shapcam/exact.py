"""Exact Shapley values by enumerating every coalition: the oracle for small games."""
from __future__ import annotations

from math import factorial

import numpy as np

from ._arrays import host_numpy, values_2d

MAX_EXACT_PLAYERS = 24


def coalition_masks(start: int, stop: int, n: int) -> np.ndarray:
    """Coalitions with indices [start, stop): bit p of the index says whether player p is in."""
    idx = np.arange(start, stop, dtype=np.int64)
    return ((idx[:, None] >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(bool)


def exact_shapley(value_fn, n_players, *, batch_size=65536, max_players=MAX_EXACT_PLAYERS,
                  device=None):
    """Exact Shapley values by enumerating all 2^n coalitions (the oracle; n up to about 20).

    Args:
        value_fn: ``value_fn(masks [B, n] bool) -> [B] or [B, m]``, as for estimate_shapley.
        n_players: number of players n (1 <= n <= max_players).
        batch_size: coalitions per value_fn call.
        max_players: refuse larger games (2^n evaluations; the default 24 is 16.7 M evaluations).
        device: None for NumPy masks, else a torch device for them.

    Returns:
        A :class:`~shapcam.ShapleyResult`: values [n] (or [n, m]) float64 NumPy, phi_i = sum over
        S not containing i of |S|! (n-|S|-1)! / n! * (v(S + i) - v(S)); stderr zeros;
        n_evals = 2^n; n_permutations = n_samples = 0; v_full, v_empty; engine "exact".
        ``np.asarray(result)`` (or ``result.values``) is the array.
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn: expected a callable, got {type(value_fn).__name__}")
    if isinstance(n_players, bool) or not isinstance(n_players, (int, np.integer)) or n_players < 1:
        raise ValueError(f"n_players: expected a positive int, got {n_players!r}")
    n = int(n_players)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if n > max_players:
        raise ValueError(
            f"n_players={n}: exact enumeration needs 2^{n} = {2**n:,} evaluations and "
            f"{2**n * 8 / 2**30:.1f} GiB per output for the values; the limit is {max_players} "
            f"(raise max_players if you mean it) — use estimate_shapley for larger games")
    total = 1 << n
    vals, m = None, None
    single = False
    for s in range(0, total, batch_size):
        e = min(total, s + batch_size)
        masks = coalition_masks(s, e, n)
        if device is not None:
            import torch

            masks = torch.from_numpy(masks).to(device)
        # the estimator's checks: real numbers, [B] or [B, m] with the first call's m throughout
        v, got_m = values_2d(value_fn(masks), e - s, m, f"coalitions [{s}, {e})")
        v = host_numpy(v)
        if not np.isfinite(v).all():
            raise ValueError("value_fn returned a non-finite value (NaN or inf)")
        if vals is None:
            m, single = got_m, got_m == 0
            vals = np.empty((total, v.shape[1]), dtype=np.float64)
        vals[s:e] = v
    sizes = np.array([bin(i).count("1") for i in range(1 << min(n, 16))], dtype=np.int64)
    if n > 16:  # popcount of a 2^n range from the 16-bit table
        idx = np.arange(total, dtype=np.int64)
        sizes = sizes[idx & 0xFFFF] + sizes[idx >> 16]
    weights = np.array([factorial(k) * factorial(n - k - 1) / factorial(n) for k in range(n)])
    v2 = vals.reshape(total, -1)
    phi = np.empty((n, v2.shape[1]))
    idx = np.arange(total, dtype=np.int64)
    for i in range(n):
        without = idx[(idx >> i) & 1 == 0]
        w = weights[sizes[without]]
        phi[i] = (w[:, None] * (v2[without | (1 << i)] - v2[without])).sum(0)
    from .estimator import ShapleyResult

    if single:
        phi, v_full, v_empty = phi[:, 0], float(v2[-1, 0]), float(v2[0, 0])
    else:
        v_full, v_empty = v2[-1].copy(), v2[0].copy()
    return ShapleyResult(values=phi, stderr=np.zeros_like(phi), n_evals=total, n_permutations=0,
                         n_samples=0, v_full=v_full, v_empty=v_empty, seed=0, antithetic=False,
                         engine="exact", stop_reason="exact", sampler="exact")
