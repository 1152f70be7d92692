"""Cooperative games the estimator can sample: a plain mask -> value function, and the fused
masked-input game (Shap-CAM's game) where the engine writes the masked inputs directly."""
from __future__ import annotations

import numpy as np

from . import ops
from ._arrays import is_cuda_array, is_torch, resolve_device, shape_of

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
        self.plan = ops.plan_masked_apply(x, players, n_players, baseline)
        self.n_players = self.plan.n
        self.device = x.device if is_torch(x) else None
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
            self._buffer = ops.new_output(self.plan, B)
        return self._buffer[:B]

    def endpoints(self):
        buf = ops.new_output(self.plan, 2)
        buf[0] = self.plan.baseline
        buf[1] = self.plan.x
        return self.f(buf)

    def evaluate(self, seed, e0, e1, antithetic, engine):
        out = self._buffer_for(e1 - e0)
        ops.apply_plan(self.plan, seed, e0, e1, antithetic, out=out, engine=engine)
        return self.f(out)


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

