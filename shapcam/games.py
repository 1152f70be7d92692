"""Cooperative games the estimator can sample: a plain mask -> value function, and the fused
masked-input game (Shap-CAM's game) where the engine writes the masked inputs directly."""
from __future__ import annotations

import numpy as np

import threading
from dataclasses import dataclass

from . import ops
from ._arrays import dtype_name, host_numpy, is_cuda_array, is_torch, resolve_device, shape_of

# Player ids and ranks are int32 in every engine.
MAX_PLAYERS = 2**31 - 1
# Memory for one batch of masked inputs when the caller gives no batch_size.
DEFAULT_BATCH_BYTES_CPU = 256 * 2**20
DEFAULT_BATCH_BYTES_CUDA = 1024 * 2**20


class Game:
    """What the estimator needs from a game.

    ``n_players``; ``device`` (None for NumPy, else a torch.device); ``endpoints()`` -> values of
    the empty and the full coalition, ``[2]`` or ``[2, m]``; ``evaluate(seed, e0, e1, antithetic,
    engine)`` -> values of evaluations [e0, e1) in index order, ``[B]`` or ``[B, m]``;
    ``default_batch_size()``. Values come back in the game's array type and device.
    ``evaluate_masks(masks [B, n] bool NumPy)`` -> values of arbitrary coalitions, for samplers
    that are not permutation prefixes (``sampler="regression"``); optional.
    """

    n_players: int
    device = None

    def default_batch_size(self) -> int:
        return 4096

    def endpoints(self):
        raise NotImplementedError

    def evaluate(self, seed, e0, e1, antithetic, engine):
        raise NotImplementedError

    def evaluate_masks(self, masks):
        raise NotImplementedError(f"{type(self).__name__} values permutation prefixes only (it has "
                                  "no evaluate_masks); use a permutation sampler")

    @property
    def any_coalition(self) -> bool:
        """Whether the game values arbitrary coalitions (evaluate_masks)."""
        return type(self).evaluate_masks is not Game.evaluate_masks


def _masks_to(masks, device):
    """Host bool masks as a torch tensor on device (None: NumPy as is)."""
    if device is None:
        return masks
    import torch

    return torch.from_numpy(np.ascontiguousarray(masks)).to(device)


class MaskGame(Game):
    """A value function of boolean coalition masks: ``value_fn(masks [B, n]) -> [B] or [B, m]``.

    masks are NumPy when device is None, else a torch bool tensor on ``device``.
    """

    def __init__(self, value_fn, n_players, device=None):
        if not callable(value_fn):
            raise TypeError(f"value_fn: expected a callable, got {type(value_fn).__name__}")
        if isinstance(n_players, bool) or not isinstance(n_players, (int, np.integer)):
            raise TypeError(f"n_players: expected an int, got {type(n_players).__name__}")
        if n_players < 1:
            raise ValueError(f"n_players: need at least 1 player, got {n_players}")
        self.value_fn = value_fn
        self.n_players = int(n_players)
        self.device = resolve_device(device)

    def default_batch_size(self) -> int:
        return int(max(1, min(2**14, 2**24 // self.n_players)))

    def _masks_buffer(self, B):
        if self.device is None:
            return np.empty((B, self.n_players), dtype=bool)
        import torch

        return torch.empty((B, self.n_players), dtype=torch.bool, device=self.device)

    def endpoints(self):
        m = self._masks_buffer(2)
        m[0] = False
        m[1] = True
        return self.value_fn(m)

    def evaluate(self, seed, e0, e1, antithetic, engine):
        out = self._masks_buffer(e1 - e0)
        ops.masks(seed, e0, e1, self.n_players, antithetic, engine=engine, out=out)
        return self.value_fn(out)

    def evaluate_masks(self, masks):
        return self.value_fn(_masks_to(masks, self.device))


@dataclass
class MaskPlan:
    """The masked-input game's prepared state: everything masked_apply needs that does not change
    between chunks, checked once (:meth:`build`) and owned by the game.

    x [*S] (contiguous) viewed as [outer, inner]; players_flat [inner] int32 with ids in 0..n-1;
    baseline a Python float or an array shaped like x (same array type, device and dtype as x).
    """

    x: object
    n: int
    outer: int
    inner: int
    players_flat: np.ndarray
    baseline: object
    _players_dev: object = None

    @property
    def shape(self):
        return shape_of(self.x)

    @property
    def dtype(self):
        return dtype_name(self.x)

    @classmethod
    def build(cls, x, players, n=None, baseline=0.0) -> "MaskPlan":
        """Check x, the player map and the baseline once; see ops.masked_apply for their meaning."""
        xdt = dtype_name(x)
        if xdt not in ("float32", "float64"):
            raise TypeError(f"x: dtype must be float32 or float64, got {xdt}")
        shape = shape_of(x)
        if len(shape) == 0:
            raise ValueError("x: must have at least one dimension")
        if int(np.prod(shape, dtype=np.int64)) == 0:
            raise ValueError(f"x: has no elements (shape {shape}); there is nothing to mask")
        if baseline is None or isinstance(baseline, (bool, np.bool_)):
            raise TypeError(f"baseline: expected a number or an array, got {baseline!r}")
        if not (is_torch(players) or isinstance(players, np.ndarray) or np.isscalar(players)):
            players = np.asarray(players)
        pl = host_numpy(players)
        if not np.issubdtype(pl.dtype, np.integer):
            raise TypeError(f"players: expected an integer array of player ids, got {pl.dtype}")
        if pl.ndim > len(shape):
            raise ValueError(f"players: shape {pl.shape} has more dimensions than x {shape}")
        padded = (1,) * (len(shape) - pl.ndim) + pl.shape
        try:
            fits = np.broadcast_shapes(padded, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"players: shape {pl.shape} does not broadcast to x's shape {shape}")
        if pl.size == 0:
            raise ValueError("players: empty player map")
        lo, hi = int(pl.min()), int(pl.max())
        if n is None:
            n = hi + 1
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n_players: expected an int, got {type(n).__name__}")
        if n > MAX_PLAYERS:
            raise ValueError(f"n_players: at most {MAX_PLAYERS} players (ids are int32), got {n}")
        if lo < 0 or hi >= n:
            raise ValueError(f"players: ids must lie in [0, {n}), got range [{lo}, {hi}]")
        # Leading axes where the player map is broadcast form `outer`; the rest is `inner`.
        lead = 0
        while lead < len(shape) and padded[lead] == 1 and shape[lead] != 1:
            lead += 1
        while lead < len(shape) and shape[lead] == 1:
            lead += 1
        outer = int(np.prod(shape[:lead], dtype=np.int64))
        inner_shape = shape[lead:]
        players_flat = np.ascontiguousarray(
            np.broadcast_to(pl.reshape(padded)[(0,) * lead], inner_shape), dtype=np.int32).reshape(-1)
        inner = players_flat.size
        if np.isscalar(baseline) or (hasattr(baseline, "ndim") and baseline.ndim == 0 and not is_cuda_array(baseline)):
            if np.iscomplexobj(baseline) or isinstance(baseline, str):
                raise TypeError(f"baseline: expected a real number, got {baseline!r}")
            base = float(baseline)
        else:
            base = _prepare_baseline(baseline, x, shape)
        return cls(x=_contiguous(x), n=int(n), outer=outer, inner=inner, players_flat=players_flat,
                   baseline=base)

    def new_output(self, B: int):
        """An uninitialised [B, *S] buffer of x's array type, dtype and device."""
        if is_torch(self.x):
            import torch

            return torch.empty((B,) + self.shape, dtype=self.x.dtype, device=self.x.device)
        if is_cuda_array(self.x):
            import cupy

            return cupy.empty((B,) + self.shape, dtype=self.dtype)
        return np.empty((B,) + self.shape, dtype=self.x.dtype)

    def players_on_device(self):
        """players_flat on x's device (copied once, kept for the next chunks)."""
        if self._players_dev is None:
            if is_torch(self.x):
                import torch

                self._players_dev = torch.from_numpy(self.players_flat).to(self.x.device)
            else:
                import cupy

                self._players_dev = cupy.asarray(self.players_flat)
        return self._players_dev

    def host(self) -> "MaskPlan":
        """The same plan over host copies of x and the baseline."""
        hb = self.baseline if isinstance(self.baseline, float) else host_numpy(self.baseline)
        return MaskPlan(host_numpy(self.x), self.n, self.outer, self.inner, self.players_flat, hb)


def _contiguous(x):
    if is_torch(x):
        return x.detach().contiguous()
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x)
    return x  # __cuda_array_interface__ producer: cuda_pointer checks contiguity


def _prepare_baseline(baseline, x, shape):
    if is_torch(x):
        import torch

        # A host array is a value and moves to x's device; a tensor elsewhere is a mistake.
        b = baseline if is_torch(baseline) else torch.as_tensor(np.asarray(baseline), device=x.device)
        if b.device != x.device:
            raise ValueError(f"baseline: on {b.device} but x is on {x.device}")
        b = b.to(dtype=x.dtype)
        try:
            return b.expand(shape).contiguous()
        except RuntimeError:
            raise ValueError(f"baseline: shape {tuple(b.shape)} does not broadcast to x's shape {shape}") from None
    if is_cuda_array(baseline) != is_cuda_array(x):
        raise ValueError("baseline: must live on the same device as x")
    b = np.asarray(host_numpy(baseline), dtype=np.asarray(x).dtype)
    try:
        return np.ascontiguousarray(np.broadcast_to(b, shape))
    except ValueError:
        raise ValueError(f"baseline: shape {b.shape} does not broadcast to x's shape {shape}") from None


class MaskedInputGame(Game):
    """The masked-input game: coalition S keeps x where ``players`` is in S, ``baseline`` elsewhere.

    Args:
        f: callable taking the masked inputs ``[B, *x.shape]`` (x's array type and device) and
            returning ``[B]`` or ``[B, m]`` values.
        x: the input, float32 or float64: NumPy array, torch tensor (CPU or CUDA).
        baseline: a scalar or an array broadcastable to x (default 0).
        players: integer player ids broadcastable to x.shape (default: every element of x is a
            player). A ``[h, w]`` map over a ``[C, h, w]`` feature map is the Shap-CAM game.
        n_players: number of players (default: max id + 1).
        workspace: optional buffer ``[B, *x.shape]`` (x's array type, dtype and device) for the
            masked inputs, reused across games (e.g. one per image) to skip allocating and
            first-touching it each time; a smaller one is replaced when a batch needs more.

    The estimator asks the engine to write each chunk of masked inputs straight into one reused
    buffer of at most ``batch_size`` inputs: masks are never stored, and memory does not grow
    with K.
    """

    def __init__(self, f, x, baseline=0.0, players=None, n_players=None, workspace=None):
        if not callable(f):
            raise TypeError(f"f: expected a callable, got {type(f).__name__}")
        if players is None:
            players = np.arange(int(np.prod(shape_of(x))), dtype=np.int64).reshape(shape_of(x))
        if is_torch(x) and x.requires_grad:
            x = x.detach()
        if not (is_torch(x) or is_cuda_array(x)):
            x = np.asarray(x)
        self.f = f
        self.plan = MaskPlan.build(x, players, n_players, baseline)
        self.n_players = self.plan.n
        self.device = x.device if is_torch(x) else None
        self._lock = threading.Lock()
        self._buffer = None
        if workspace is not None:
            ws_shape = shape_of(workspace)
            if ws_shape[1:] != self.plan.shape or is_cuda_array(workspace) != is_cuda_array(self.plan.x):
                raise ValueError(f"workspace: expected [B, *{self.plan.shape}] on x's device, got {ws_shape}")
            self._buffer = workspace

    def __getstate__(self):
        # For executor= workers: the lock and the workspace stay with this process.
        state = dict(self.__dict__)
        state["_lock"], state["_buffer"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def workspace(self):
        """The buffer of masked inputs (pass it to the next game to reuse it)."""
        return self._buffer

    @property
    def x(self):
        return self.plan.x

    def default_batch_size(self) -> int:
        cuda = is_cuda_array(self.plan.x)
        budget = DEFAULT_BATCH_BYTES_CUDA if cuda else DEFAULT_BATCH_BYTES_CPU
        per = int(np.prod(self.plan.shape)) * (4 if self.plan.dtype == "float32" else 8)
        return int(max(1, budget // max(per, 1)))

    def _buffer_for(self, B):
        if self._buffer is None or shape_of(self._buffer)[0] < B:
            self._buffer = self.plan.new_output(B)
        return self._buffer[:B]

    def endpoints(self):
        buf = self.plan.new_output(2)
        buf[0] = self.plan.baseline
        buf[1] = self.plan.x
        return self.f(buf)

    def evaluate(self, seed, e0, e1, antithetic, engine):
        # The workspace is shared by every call on this game: one thread at a time writes it and
        # runs f on it (a game used from several threads stays correct, serialised here).
        with self._lock:
            out = self._buffer_for(e1 - e0)
            ops.apply_plan(self.plan, seed, e0, e1, antithetic, out=out, engine=engine)
            return _detached_copy_if_view(self.f(out), out)

    def evaluate_masks(self, masks):
        """f on the inputs of arbitrary coalitions: x where the element's player is in S, the
        baseline elsewhere (the masked inputs the engines write, built with where)."""
        p = self.plan
        with self._lock:
            out = self._buffer_for(masks.shape[0])
            B = masks.shape[0]
            keep = np.ascontiguousarray(masks[:, p.players_flat])  # [B, inner]
            if is_torch(p.x):
                import torch

                keep_t = torch.from_numpy(keep).to(p.x.device)[:, None, :]
                x = p.x.reshape(1, p.outer, p.inner)
                base = p.baseline if isinstance(p.baseline, float) else p.baseline.reshape(1, p.outer, p.inner)
                if isinstance(base, float):
                    base = torch.tensor(base, dtype=p.x.dtype, device=p.x.device)
                out.view(B, p.outer, p.inner).copy_(torch.where(keep_t, x, base))
            else:
                xp = np if isinstance(p.x, np.ndarray) else __import__("cupy")
                k = xp.asarray(keep)[:, None, :]
                x = p.x.reshape(1, p.outer, p.inner)
                base = p.baseline if isinstance(p.baseline, float) else p.baseline.reshape(1, p.outer, p.inner)
                out.reshape(B, p.outer, p.inner)[...] = xp.where(k, x, xp.asarray(base, dtype=x.dtype))
            return _detached_copy_if_view(self.f(out), out)


MAX_CELL_SIZE = 8  # csrc/include/shapcam/walk.h: kMaxCellSize


class CellTableGame(Game):
    """A game that is affine per cell, read out by any function: the heads most CNNs have, and a
    GLM on tabular features.

    The players are split into disjoint cells; ``tables[c, s]`` is cell c's contribution (a
    d-vector) when the subset ``s`` of its players is present (bit b of s = the cell's b-th
    player, ``cells[c, b]``). A coalition S is valued as

        z(S) = z_empty + sum_c (tables[c, S ∩ c] - tables[c, {}]),    v(S) = readout(z(S)).

    Consecutive prefixes of a permutation differ by one player, so the engines walk each
    permutation updating z in O(d) per evaluation (csrc/include/shapcam/walk.h) — no pass over the
    input — and only ``readout`` runs per coalition, in batches.

    Args:
        tables: [n_cells, 2^size, d] float32/float64 (NumPy, or a torch tensor on CPU or CUDA).
        cells: [n_cells, size] int player ids with -1 padding (size <= 8), one partition of the
            players 0..n-1; None for one player per cell (cell c = player c; size 1).
        readout: ``readout(Z [B, d]) -> [B] or [B, m]`` in the tables' array type; None: the
            values are Z itself (m = d). Then the game is additive over cells and
            :meth:`exact_shapley` gives the exact values.
        z_empty: [d] z of the empty coalition (default: sum_c tables[c, 0]).

    Example (a logistic GLM on tabular features, explained against a background point)::

        game = CellTableGame.glm(weights, x, background, intercept=b0, link=scipy.special.expit)
        res = shapcam.estimate_shapley(game, K=256)
    """

    def __init__(self, tables, cells=None, readout=None, z_empty=None):
        if dtype_name(tables) not in ("float32", "float64"):
            raise TypeError(f"tables: dtype must be float32 or float64, got {dtype_name(tables)}")
        shape = shape_of(tables)
        if len(shape) != 3 or 0 in shape:
            raise ValueError(f"tables: expected a non-empty [n_cells, 2^size, d] array, got {shape}")
        n_cells, subsets, d = shape
        if cells is None:
            cells = np.arange(n_cells, dtype=np.int64)[:, None]
        cells = np.asarray(host_numpy(cells))
        if cells.ndim == 1:
            cells = cells[:, None]
        if cells.ndim != 2 or cells.shape[0] != n_cells or not np.issubdtype(cells.dtype, np.integer):
            raise ValueError(f"cells: expected an int array [n_cells={n_cells}, size], got "
                             f"{cells.shape} {cells.dtype}")
        size = cells.shape[1]
        if not 1 <= size <= MAX_CELL_SIZE:
            raise ValueError(f"cells: at most {MAX_CELL_SIZE} players per cell, got {size}")
        if subsets != 1 << size:
            raise ValueError(f"tables: cells of {size} players need 2^{size} = {1 << size} subsets "
                             f"on axis 1, got {subsets}")
        ids = cells[cells >= 0]
        if (cells < -1).any() or ids.size == 0:
            raise ValueError("cells: ids must be player ids >= 0 or -1 (padding)")
        n = int(ids.max()) + 1
        if n > MAX_PLAYERS:
            raise ValueError(f"cells: at most {MAX_PLAYERS} players")
        counts = np.bincount(ids, minlength=n)
        if (counts != 1).any():
            bad = int(np.flatnonzero(counts != 1)[0])
            raise ValueError(f"cells: player {bad} appears {int(counts[bad])} times; every player "
                             f"0..{n - 1} must be in exactly one cell")
        if readout is not None and not callable(readout):
            raise TypeError(f"readout: expected a callable or None, got {type(readout).__name__}")
        self.tables = tables if is_torch(tables) or is_cuda_array(tables) else np.ascontiguousarray(tables)
        if is_torch(self.tables):
            self.tables = self.tables.detach().contiguous()
        self.members = np.ascontiguousarray(cells, dtype=np.int32)
        cell_of = np.empty(n, dtype=np.int32)
        rows, cols = np.nonzero(cells >= 0)
        cell_of[cells[rows, cols]] = rows
        self.cell_of = cell_of
        self.n_players, self.n_cells, self.cell_size, self.d = n, n_cells, size, d
        self.readout = readout
        self.device = self.tables.device if is_torch(self.tables) else None
        if z_empty is None:
            z_empty = self._cell_sum(self.tables[:, 0])
        elif shape_of(z_empty) != (d,):
            raise ValueError(f"z_empty: expected [{d}], got {shape_of(z_empty)}")
        if is_torch(self.tables):
            import torch

            z_empty = torch.as_tensor(z_empty, dtype=self.tables.dtype, device=self.tables.device)
            self.z_empty = z_empty.detach().contiguous()
        else:
            self.z_empty = np.ascontiguousarray(host_numpy(z_empty), dtype=self.tables.dtype)
        self._dev_structure = None

    @classmethod
    def glm(cls, weights, x, baseline=0.0, intercept=0.0, link=None):
        """A generalised linear model explained against a baseline (background) point: players are
        the p features, v(S) = link(intercept + sum_{i in S} w_i x_i + sum_{i not in S} w_i b_i).

        weights [p] or [p, m] (m outputs); x, baseline [p] (baseline may be a scalar); link: a
        callable on [B, m] (None: the linear predictor itself, values [p, m], exact via
        exact_shapley). With a link and 1-D weights the values are [p]."""
        w = np.asarray(weights, dtype=np.float64)
        w = w[:, None] if w.ndim == 1 else w
        x = np.asarray(x, dtype=np.float64)
        if w.ndim != 2 or x.ndim != 1 or w.shape[0] != x.shape[0]:
            raise ValueError(f"weights [p] or [p, m] and x [p]: got {w.shape} and {x.shape}")
        p, m = w.shape
        baseline = np.asarray(baseline, dtype=np.float64)
        if baseline.shape not in ((), (p,)):
            raise ValueError(f"baseline: expected a number or [p={p}], got shape {baseline.shape}")
        intercept = np.asarray(intercept, dtype=np.float64)
        if intercept.shape not in ((), (m,)):
            raise ValueError(f"intercept: expected a number or [m={m}] (one per output), got shape "
                             f"{intercept.shape}")
        if link is not None and not callable(link):
            raise TypeError(f"link: expected a callable or None, got {type(link).__name__}")
        b = np.broadcast_to(baseline, x.shape)
        tables = np.stack([w * b[:, None], w * x[:, None]], 1)  # [p, 2, m]
        z_empty = intercept + (w * b[:, None]).sum(0)
        squeeze = np.asarray(weights).ndim == 1
        if link is None:
            readout = None  # additive: exact_shapley applies (values [p, m], m = 1 for 1-D weights)
        else:
            def readout(z):  # link on [B, m]: [B, m], or [B] for one output
                out = link(z)
                B, shape = z.shape[0], shape_of(out)
                if shape == (B, m):
                    return out[:, 0] if squeeze else out
                if shape == (B,) and m == 1:
                    return out if squeeze else out[:, None]
                raise ValueError(f"link: returned shape {shape} for z of shape ({B}, {m}); "
                                 f"expected ({B}, {m})" + (f" or ({B},)" if m == 1 else ""))
        return cls(tables, None, readout, z_empty=np.broadcast_to(z_empty, (m,)).copy())

    def structure_on_device(self):
        """(members, cell_of) on the tables' device (copied once)."""
        if self._dev_structure is None:
            if is_torch(self.tables):
                import torch

                dev = self.tables.device
                self._dev_structure = (torch.from_numpy(self.members).to(dev),
                                       torch.from_numpy(self.cell_of).to(dev))
            else:
                import cupy

                self._dev_structure = (cupy.asarray(self.members), cupy.asarray(self.cell_of))
        return self._dev_structure

    def default_batch_size(self) -> int:
        item = 4 if dtype_name(self.tables) == "float32" else 8
        return int(max(1, min(2**16, (32 * 2**20) // (self.d * item))))

    def _read(self, Z):
        return Z if self.readout is None else self.readout(Z)

    def _cell_sum(self, x):
        """Sum over cells of x [cells, d], the same bits on every device: summed on the host in
        float64 in one fixed order, then cast to the tables' dtype (and device). A reduction on
        the device would take the device's order, and the CPU and GPU games would differ.
        Tables that require grad keep the device sum (and their graph)."""
        if getattr(x, "requires_grad", False):
            return x.sum(0)
        total = host_numpy(x).astype(np.float64).sum(0)
        if is_torch(self.tables):
            import torch

            return torch.as_tensor(total, device=self.tables.device).to(self.tables.dtype)
        return total.astype(self.tables.dtype)

    def _full_z(self):
        """z of the grand coalition: every cell's full subset."""
        full = ((self.members >= 0).astype(np.int64) << np.arange(self.cell_size)).sum(1)
        if is_torch(self.tables):
            import torch

            idx = torch.from_numpy(full).to(self.tables.device)
            cells = torch.arange(self.n_cells, device=self.tables.device)
            return self.z_empty + self._cell_sum(self.tables[cells, idx] - self.tables[:, 0])
        return self.z_empty + self._cell_sum(self.tables[np.arange(self.n_cells), full] - self.tables[:, 0])

    def endpoints(self):
        z = self._full_z()
        if is_torch(self.tables):
            import torch

            Z = torch.stack([self.z_empty, z])
        else:
            Z = np.stack([self.z_empty, z])
        return self._read(Z)

    def evaluate(self, seed, e0, e1, antithetic, engine):
        return self._read(ops.prefix_walk(self, seed, e0, e1, antithetic, engine=engine))

    def evaluate_masks(self, masks):
        """readout(z(S)) of arbitrary coalitions: z_empty + sum over cells of (T[c, S & c] -
        T[c, {}]), gathered per coalition (O(cells d) each; the prefix walk is O(d))."""
        members = self.members
        valid = members >= 0
        bits = (masks[:, np.where(valid, members, 0)] & valid[None]).astype(np.int64)
        sub = (bits << np.arange(self.cell_size, dtype=np.int64)).sum(2)  # [B, cells]
        T = self.tables
        if is_torch(T):
            import torch

            asarray, cat = (lambda a: torch.from_numpy(a).to(T.device)), torch.cat
        else:
            xp = np if isinstance(T, np.ndarray) else __import__("cupy")
            asarray, cat = xp.asarray, xp.concatenate
        cells = asarray(np.arange(self.n_cells))[None, :]
        step = max(1, (1 << 24) // max(1, self.n_cells * self.d))  # rows per gather of [rows, cells, d]
        parts = [self.z_empty + (T[cells, asarray(sub[a:a + step])] - T[:, 0][None]).sum(1)
                 for a in range(0, max(1, masks.shape[0]), step)]
        Z = cat(parts)
        return self._read(Z)

    def exact_shapley(self):
        """Exact Shapley values when readout is None (the game is then a sum of cell games):
        within each cell, enumeration over its 2^size subsets. -> ShapleyResult, values [n, d]
        (stderr 0), NumPy (or torch on the tables' device)."""
        from math import factorial

        from .estimator import ShapleyResult

        if self.readout is not None:
            raise ValueError("exact_shapley: only for readout=None (an additive game); sample it "
                             "with estimate_shapley")
        T = self.tables
        valid = self.members >= 0  # [cells, size]: padding slots are no players
        per_slot = [[None] * self.cell_size for _ in range(self.n_cells)]
        for pattern in np.unique(valid, axis=0):
            idx = np.flatnonzero((valid == pattern).all(1))
            tidx = idx if not is_torch(T) else __import__("torch").from_numpy(idx).to(T.device)
            bits = [b for b in range(self.cell_size) if pattern[b]]
            k = len(bits)
            for b in bits:
                others = [o for o in bits if o != b]
                acc = 0
                for r in range(1 << len(others)):  # every subset of the cell's other players
                    sub = sum(1 << o for j, o in enumerate(others) if (r >> j) & 1)
                    size_s = bin(r).count("1")
                    w = factorial(size_s) * factorial(k - size_s - 1) / factorial(k)
                    acc = acc + w * (T[tidx, sub | (1 << b)] - T[tidx, sub])
                for row, c in enumerate(idx):
                    per_slot[c][b] = acc[row]
        pairs = [(int(self.members[c, b]), per_slot[c][b]) for c in range(self.n_cells)
                 for b in range(self.cell_size) if valid[c, b]]
        pairs.sort(key=lambda p: p[0])
        if is_torch(T):
            import torch

            values = torch.stack([v for _, v in pairs]).double()
        else:
            values = np.stack([v for _, v in pairs]).astype(np.float64)
        v_full, v_empty = self._full_z(), self.z_empty
        return ShapleyResult(values=values, stderr=values * 0, n_evals=self.n_cells << self.cell_size,
                             n_permutations=0, n_samples=0, v_full=v_full, v_empty=v_empty,
                             seed=0, antithetic=False, engine="exact", stop_reason="exact",
                             sampler="exact")


class TruncatedGame(Game):
    """Truncated Monte-Carlo (TMC-Shapley, Ghorbani & Zou 2019): along each permutation, once a
    prefix's value is within ``tol`` of v(all players), the rest of that permutation is not
    evaluated: its prefixes take that value, so the remaining players' marginals are 0.

    For games where an evaluation is expensive and the value saturates long before the last
    player (data valuation: a model trained on the first t points of a permutation). Truncation
    trades bias for speed: players that would have mattered after the cut get nothing in that
    permutation, and the residual v(all) - v(cut) goes to the permutation's last player (the
    values still sum to v(all) - v(none) exactly); the standard errors describe the truncated
    estimator, not the distance to the exact Shapley values. With ``tol=0`` a permutation is cut
    only where a prefix already has exactly v(all) (then nothing is lost where the game is
    monotone and saturated).

    Args:
        value_fn: ``value_fn(masks [B, n] bool NumPy) -> [B] or [B, m]`` (host only).
        n_players: n.
        tol: truncate once ``max |v(prefix) - v(all)| <= tol`` (value units, largest over outputs).
        step: prefixes evaluated together before the rule is checked again (evaluations after the
            cut inside one step are spent but not used; 1 is the textbook, one at a time).

    ``evaluated`` and ``skipped`` count the evaluations this process made and saved.
    """

    def __init__(self, value_fn, n_players, tol, step=16):
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or \
                not np.isfinite(tol) or tol < 0:
            raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise ValueError(f"step: expected a positive int, got {step!r}")
        self.inner = MaskGame(value_fn, n_players)
        self.n_players = self.inner.n_players
        self.tol, self.step = float(tol), int(step)
        self._v_full = self._v_shape = None
        self._local = threading.local()  # the walk in progress, one per thread
        self.evaluated = self.skipped = 0

    @property
    def _walk(self):
        """((seed, antithetic, permutation), the value it was cut at or None) of this thread's
        permutation in progress: keyed by the run's seed and design, so a second run on this game
        (another seed) never takes the first run's cut, and per thread, so runs on several
        threads do not take each other's."""
        return getattr(self._local, "walk", None)

    @_walk.setter
    def _walk(self, value):
        self._local.walk = value

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_local"]  # a walk in progress belongs to this process's run, not a copy's
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def default_batch_size(self) -> int:
        return self.inner.default_batch_size()

    def endpoints(self):
        ends = self.inner.endpoints()
        # a copy: value_fn may return a view of a buffer it writes again on its next call
        ends_np = np.array(host_numpy(ends), dtype=np.float64)
        self._v_full, self._v_shape = ends_np[1].reshape(-1), ends_np.shape[1:]
        return ends

    def evaluate(self, seed, e0, e1, antithetic, engine):
        if self._v_full is None:
            self.endpoints()
        per = self.n_players - 1
        out = []
        e = e0
        while e < e1:
            k = e // per
            key = (seed, antithetic, k)
            if self._walk is None or self._walk[0] != key:
                self._walk = (key, None)
                if e != k * per:  # entered mid-permutation: replay its prefixes to find the cut
                    self._values(seed, k * per, e, antithetic, engine)
            end = min(e1, (k + 1) * per)
            out.append(self._values(seed, e, end, antithetic, engine))
            e = end
        return np.concatenate(out)

    def _values(self, seed, e0, e1, antithetic, engine):
        """Values of evaluations [e0, e1) of the permutation in progress, in steps."""
        rows = []
        for a in range(e0, e1, self.step):
            b = min(e1, a + self.step)
            cut = self._walk[1]
            if cut is not None:
                rows.append(np.broadcast_to(cut, (b - a,) + cut.shape))
                self.skipped += b - a
                continue
            # a copy: the steps are kept until the chunk is whole, and value_fn may return a
            # view of a buffer it writes again on the next step
            v = np.array(host_numpy(self.inner.evaluate(seed, a, b, antithetic, engine)),
                         dtype=np.float64, copy=True)
            self.evaluated += b - a
            want = (b - a,) + self._v_shape
            if v.shape != want:  # checked here: the steps are joined before the estimator sees them
                raise ValueError(f"value_fn returned shape {v.shape} for evaluations [{a}, {b}); "
                                 f"expected {list(want)} (the shape of its first values)")
            v2 = v.reshape(b - a, -1)
            close = np.abs(v2 - self._v_full).max(axis=1) <= self.tol
            if close.any():
                i = int(np.argmax(close))
                cut = v[i].copy()
                v[i + 1:] = cut
                self._walk = (self._walk[0], cut)
            rows.append(v)
        return np.concatenate(rows)


def _detached_copy_if_view(values, buffer):
    """f's values, copied when they share memory with the workspace (an f that returns a view of
    its input would otherwise see them overwritten by the next chunk)."""
    if is_torch(values) and is_torch(buffer):
        if values.numel() and values.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
            return values.clone()
        return values
    if isinstance(values, np.ndarray) and isinstance(buffer, np.ndarray) and \
            np.may_share_memory(values, buffer):
        return values.copy()
    return values


def as_game(value_fn, n_players=None, device=None) -> Game:
    """A Game as is, or a mask -> value function wrapped as a MaskGame."""
    if isinstance(value_fn, Game):
        if n_players is not None and n_players != value_fn.n_players:
            raise ValueError(f"n_players: the game has {value_fn.n_players} players, got {n_players}")
        if device is not None and resolve_device(device) != value_fn.device:
            gdev = value_fn.device
            raise ValueError(f"device: {device!r} does not match the game's data on "
                             f"{gdev if gdev is not None else 'host (NumPy)'}")
        return value_fn
    if n_players is None:
        raise TypeError("n_players: required when value_fn is a plain function")
    return MaskGame(value_fn, n_players, device)

