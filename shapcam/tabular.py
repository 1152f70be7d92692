"""The background-set game of tabular explanations: explain ``predict`` at one row x against a
background data set, as shap's Explainer(model, background) with an Independent masker does."""
from __future__ import annotations

import numpy as np

from ._arrays import host_numpy, is_torch, shape_of
from .games import MaskedInputGame


def _columns_of(data):
    """(array [.., d] NumPy or torch, column names or None) of a NumPy array, torch tensor or
    pandas DataFrame / Series."""
    cols = getattr(data, "columns", None)
    if cols is not None:  # a DataFrame
        return np.asarray(data.to_numpy(dtype=np.float64)), list(cols)
    if hasattr(data, "to_numpy") and hasattr(data, "index"):  # a Series: its index names the columns
        return np.asarray(data.to_numpy(dtype=np.float64)), list(data.index)
    if is_torch(data):
        return data.detach(), None
    return np.asarray(data), None


class TabularGame(MaskedInputGame):
    """Explain ``predict`` at the row ``x`` against a background data set: the players are the
    columns (or groups of columns), and

        v(S) = link( sum_r w_r predict(x on S, background_r elsewhere) / sum_r w_r ),

    the interventional (independent-features) value of shap's Explainer with an Independent
    masker, KernelSHAP's and SamplingExplainer's. The hybrid rows of a batch of coalitions are
    written by the engine, one ``[B * R, d]`` block per call (no Python loop over rows or
    coalitions), and ``predict`` runs once per block.

    Args:
        predict: ``predict(rows [B * R, d]) -> [B * R]`` or ``[B * R, m]`` (m outputs: classes,
            or anything else). rows are NumPy, a pandas DataFrame with the background's columns
            when the background is one, or a torch tensor on x's device when x and the
            background are torch tensors.
        x: the row to explain, ``[d]`` (NumPy, a pandas Series, or a torch tensor).
        background: ``[R, d]`` rows (NumPy, a DataFrame, or a torch tensor on x's device); keep
            R small (tens to a few hundred: every coalition costs R predictions).
        groups: None (one player per column), or one group id per column ``[d]`` (ints from 0),
            or a list of groups, each a list of column indices (or names, with a DataFrame):
            one player per group, covering every column once.
        weights: ``[R]`` non-negative weights of the background rows (default: equal).
        link: a function applied to the weighted mean (e.g. ``scipy.special.logit`` to explain
            log-odds of a probability); None: the mean itself.

    ``feature_names``: the players' names (column names, or groups' names joined with "+").
    The values sum to v(all) - v(none) = link(f(x)) - link(weighted mean of f(background)).
    """

    def __init__(self, predict, x, background, *, groups=None, weights=None, link=None,
                 _rows=False):
        if not callable(predict):
            raise TypeError(f"predict: expected a callable, got {type(predict).__name__}")
        if link is not None and not callable(link):
            raise TypeError(f"link: expected a callable or None, got {type(link).__name__}")
        bg, names = _columns_of(background)
        xv, x_names = _columns_of(x)
        self._frame_columns = names if getattr(background, "columns", None) is not None else None
        bshape, xshape = shape_of(bg), shape_of(xv)
        if len(bshape) != 2 or bshape[0] < 1 or bshape[1] < 1:
            raise ValueError(f"background: expected [R, d] rows (R >= 1), got shape {bshape}")
        R, d = bshape
        if _rows:  # explain_rows: x holds N rows, explained together (outputs N * m)
            if len(xshape) != 2 or xshape[1] != d or xshape[0] < 1:
                raise ValueError(f"X: expected [N, {d}] rows of the background's {d} columns, got "
                                 f"shape {xshape}")
        elif xshape not in ((d,), (1, d)):
            raise ValueError(f"x: expected one row of the background's {d} columns, got shape {xshape}")
        N = xshape[0] if _rows else 1
        if is_torch(xv) != is_torch(bg):
            raise TypeError("x and background: both torch tensors or neither")
        if is_torch(xv):
            if xv.device != bg.device:
                raise ValueError(f"x on {xv.device} and background on {bg.device}: one device")
            dtype = bg.dtype if bg.is_floating_point() else __import__("torch").float64
            xv, bg = xv.reshape(N, d).to(dtype), bg.to(dtype)
            finite = bool(__import__("torch").isfinite(xv).all() and
                          __import__("torch").isfinite(bg).all())
        else:
            dtype = bg.dtype if bg.dtype in (np.float32, np.float64) else np.float64
            xv, bg = np.asarray(xv, dtype=dtype).reshape(N, d), np.ascontiguousarray(bg, dtype=dtype)
            finite = bool(np.isfinite(xv).all() and np.isfinite(bg).all())
        if not finite:
            raise ValueError("x and background: contain NaN or inf (impute them first)")
        col_names = names or x_names
        ids, self.feature_names = _player_ids(groups, d, col_names)
        if weights is None:
            w = np.full(R, 1.0 / R)
        else:
            w = np.asarray(host_numpy(weights), dtype=np.float64).reshape(-1)
            if w.shape != (R,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights: expected {R} non-negative finite numbers, not all 0")
            w = w / w.sum()
        self.predict, self.link, self.R, self.d, self.n_rows = predict, link, R, d, N
        self.weights = w
        self._w_dev = None
        if is_torch(xv):
            import torch

            xs = xv.reshape(N, 1, d).expand(N, R, d).contiguous()
            base = bg.reshape(1, R, d).expand(N, R, d).contiguous()
            self._w_dev = torch.as_tensor(w, dtype=torch.float64, device=xv.device)
        else:
            xs = np.ascontiguousarray(np.broadcast_to(xv[:, None, :], (N, R, d)))
            base = np.ascontiguousarray(np.broadcast_to(bg, (N, R, d)))
        players = np.ascontiguousarray(np.broadcast_to(ids, (N, R, d)))
        if not _rows:
            xs, base, players = xs.reshape(R, d), base.reshape(R, d), players.reshape(R, d)
        self._stacked = _rows
        super().__init__(self._value, xs, baseline=base, players=players,
                         n_players=int(ids.max()) + 1)

    def _value(self, rows):
        """rows [B, R, d] hybrid rows -> [B] or [B, m] values (explain_rows: [B, N, R, d] ->
        [B, N * m], or [B, N] for one output)."""
        B = shape_of(rows)[0] * self.n_rows  # one block of R rows per (coalition, row)
        flat = rows.reshape(B * self.R, self.d)
        if self._frame_columns is not None:
            import pandas as pd

            flat = pd.DataFrame(host_numpy(flat), columns=self._frame_columns)
        out = self.predict(flat)
        if is_torch(out) and self._w_dev is not None:
            import torch

            out = out.detach().to(torch.float64)
            w = self._w_dev
        else:
            out = np.asarray(host_numpy(out) if is_torch(out) else out, dtype=np.float64)
            w = self.weights
        shape = tuple(out.shape)
        self._scalar = len(shape) == 1
        if shape not in ((B * self.R,),) and not (len(shape) == 2 and shape[0] == B * self.R
                                                   and shape[1] >= 1):
            raise ValueError(f"predict: returned shape {shape} for {B * self.R} rows; expected "
                             f"[{B * self.R}] or [{B * self.R}, m]")
        v = out.reshape((B, self.R) + shape[1:])
        mean = (v * w.reshape((1, self.R) + (1,) * (len(shape) - 1))).sum(1)
        mean = mean if self.link is None else self.link(mean)
        if self._stacked:  # [B * N(, m)] -> [B, N * m]: every (row, output) is one output
            mean = mean.reshape(B // self.n_rows, -1)
        return mean


def explain_rows(predict, X, background, *, groups=None, weights=None, link=None, K=64, **kwargs):
    """Explain ``predict`` at every row of X [N, d] against one background set, as TabularGame
    explains one row, in one run: one sampling plan (the same coalitions for every row), each
    batch of coalitions one ``predict`` call on the hybrid rows of all N rows, and each (row,
    output) an output of that run, with its own standard error. K and the other keywords go to
    estimate_shapley (seed, sampler, tol, max_evals, batch_size, ...).

    Returns a ShapleyResult whose fields stack the rows: values and stderr [N, players] (or
    [N, players, m]), v_full and v_empty [N] (or [N, m]); ``efficiency_gap`` per row; it is not
    resumable. ``to_shap()`` gives a multi-row Explanation (data: X) for shap's beeswarm."""
    from .estimator import estimate_shapley

    game = TabularGame(predict, X, background, groups=groups, weights=weights, link=link,
                       _rows=True)
    res = estimate_shapley(game, K=K, **kwargs)
    N, n = game.n_rows, game.n_players
    values, stderr = np.asarray(host_numpy(res.values)), np.asarray(host_numpy(res.stderr))
    m = values.shape[1] // N
    one = m == 1 and getattr(game, "_scalar", True)

    def rows(a):  # [n, N * m] -> [N, n(, m)]
        a = a.reshape(n, N, m).transpose(1, 0, 2)
        return np.ascontiguousarray(a[..., 0] if one else a)

    def ends(v):
        v = np.asarray(host_numpy(v), dtype=np.float64).reshape(N, m)
        return v[:, 0].copy() if one else v

    res.values, res.stderr = rows(values), rows(stderr)
    res.v_full, res.v_empty = ends(res.v_full), ends(res.v_empty)
    res.state, res.stacked = None, True
    res._names = game.feature_names
    res._data = np.asarray(host_numpy(_columns_of(X)[0]))
    return res


def _player_ids(groups, d, names):
    """([d] int64 player id of each column, the players' names)."""
    if groups is None:
        ids = np.arange(d, dtype=np.int64)
        return ids, [str(n) for n in names] if names else [f"x{j}" for j in range(d)]
    if hasattr(groups, "__len__") and len(groups) and all(isinstance(g, (list, tuple)) for g in groups):
        ids = np.full(d, -1, dtype=np.int64)
        index = {n: j for j, n in enumerate(names)} if names else {}
        label = []
        for p, g in enumerate(groups):
            cols = []
            for c in g:
                j = index.get(c, c) if not isinstance(c, (int, np.integer)) else int(c)
                if not isinstance(j, (int, np.integer)) or not 0 <= j < d:
                    raise ValueError(f"groups: {c!r} is not a column (0..{d - 1} or a column name)")
                if ids[j] != -1:
                    raise ValueError(f"groups: column {c!r} is in two groups")
                ids[j] = p
                cols.append(str(names[j]) if names else f"x{j}")
            label.append("+".join(cols))
        if (ids < 0).any():
            raise ValueError(f"groups: columns {np.flatnonzero(ids < 0).tolist()} are in no group")
        return ids, label
    ids = np.asarray(groups)
    if ids.shape != (d,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
        raise ValueError(f"groups: expected one group id >= 0 per column [{d}], or a list of "
                         f"groups of columns; got {groups!r}")
    present = np.unique(ids)
    if not np.array_equal(present, np.arange(len(present))):
        raise ValueError(f"groups: ids must be 0..{len(present) - 1} with none missing, got "
                         f"{present.tolist()}")
    label = ["+".join(str(names[j]) if names else f"x{j}" for j in np.flatnonzero(ids == p))
             for p in range(len(present))]
    return ids.astype(np.int64), label

