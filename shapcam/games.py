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
    """

    n_players: int
    device = None

    def default_batch_size(self) -> int:
        return 4096

    def endpoints(self):
        raise NotImplementedError

    def evaluate(self, seed, e0, e1, antithetic, engine):
        raise NotImplementedError


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

