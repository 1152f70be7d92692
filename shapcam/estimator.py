"""Monte-Carlo permutation sampling of Shapley values, with standard errors (the paper's Eq. 5-6;
Castro, Gómez & Tejada 2009)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import ops
from ._arrays import host_numpy, is_cuda_array, is_torch
from ._progress import progress_bar
from .games import Game, as_game


@dataclass
class ShapleyResult:
    """Shapley estimates and what they rest on.

    values: [n] (or [n, m] for m outputs) — the mean marginal contribution of each player.
    stderr: same shape — standard error of each value over the independent samples (antithetic
        pairs count as one sample); NaN when fewer than 2 samples were drawn.
    n_evals: value evaluations spent (2 endpoints + n_permutations * (n - 1)).
    n_permutations, n_samples: permutations drawn, and independent samples they form.
    v_full, v_empty: v(all players) and v(no player), scalars or [m].
    stop_reason: why sampling stopped — "K", "tol", "max_evals" or "max_seconds" ("exact" for
        exact_shapley).
    state: the running (mean, M2, count) that ``estimate_shapley(..., resume=result)`` continues.
    Arrays are NumPy, or torch tensors on the game's device when it has one.
    ``np.asarray(result)`` is ``result.values`` as a NumPy array (exact_shapley returns this type
    too, with stderr 0).
    """

    values: object
    stderr: object
    n_evals: int
    n_permutations: int
    n_samples: int
    v_full: object
    v_empty: object
    seed: int = 0
    antithetic: bool = True
    engine: str = "reference"
    stop_reason: str = "K"
    state: dict | None = field(default=None, repr=False)  # the Welford state, for resume=

    def __array__(self, dtype=None, copy=None):
        from ._arrays import host_numpy

        a = np.asarray(host_numpy(self.values))
        return a.astype(dtype) if dtype is not None else a

    @property
    def efficiency_gap(self):
        """sum(values) - (v_full - v_empty): zero up to float rounding for every estimate."""
        return self.values.sum(0) - (self.v_full - self.v_empty)


def _values_2d(v, B, m, where):
    """Normalise value_fn's output to a float64 [B, m'] array (torch stays torch, on its device)."""
    if is_torch(v):
        import torch

        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"value_fn returned {v.dtype} values for {where}; expected real numbers")
        v = v.detach().to(torch.float64).contiguous()
    else:
        raw = host_numpy(v) if hasattr(v, "__cuda_array_interface__") else v
        if np.iscomplexobj(raw):  # NumPy would drop the imaginary part with only a warning
            raise TypeError(f"value_fn returned complex values for {where}; expected real numbers")
        try:
            v = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"value_fn returned something that is not an array of numbers for "
                            f"{where}: {exc}") from None
    shape = tuple(v.shape)
    got_m = shape[1] if len(shape) == 2 else 0
    if len(shape) not in (1, 2) or shape[0] != B or (m is not None and got_m != m):
        exp = f"[{B}] or [{B}, m]" if m is None else (f"[{B}]" if m == 0 else f"[{B}, {m}]")
        raise ValueError(f"value_fn returned shape {shape} for {where} ({B} coalitions); "
                         f"expected {exp}")
    return (v.reshape(B, 1) if len(shape) == 1 else v), got_m


def _check_finite_host(v, e0, n):
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        if e0 is None:
            which = "the empty coalition" if i == 0 else "the full coalition"
        else:
            k, t = (e0 + i) // (n - 1), (e0 + i) % (n - 1) + 1
            which = f"evaluation {e0 + i} (permutation {k}, coalition of its first {t} players)"
        raise ValueError(f"value_fn returned a non-finite value ({v[i].tolist()}) for {which}")


class _Accumulator:
    """Welford state [n, m] plus the carry of evaluations that do not yet form a whole sample."""

    def __init__(self, seed, n, m, antithetic, v_empty, v_full, engine, on_device):
        self.seed, self.n, self.antithetic, self.engine = seed, n, antithetic, engine
        self.pps = 2 if antithetic else 1
        self.per_sample = self.pps * (n - 1)
        self.count = 0
        self.pending = None
        if on_device:
            import torch

            self.v_empty, self.v_full = v_empty.contiguous(), v_full.contiguous()
            self.mean = torch.zeros((n, m), dtype=torch.float64, device=v_empty.device)
            self.m2 = torch.zeros_like(self.mean)
            self._cat = lambda a, b: torch.cat([a, b])
        else:
            self.v_empty, self.v_full = host_numpy(v_empty), host_numpy(v_full)
            self.mean = np.zeros((n, m))
            self.m2 = np.zeros((n, m))
            self._cat = lambda a, b: np.concatenate([a, b])
        self.on_device = on_device

    def push(self, values):
        if not self.on_device and is_torch(values):
            values = host_numpy(values)
        if self.pending is not None:
            values = self._cat(self.pending, values)
        whole = values.shape[0] // self.per_sample
        if whole:
            rows = whole * self.per_sample
            block = values[:rows]
            ops.accumulate(self.seed, self.count * self.pps, whole, self.n, self.antithetic,
                           block.contiguous() if self.on_device else block, self.v_empty,
                           self.v_full, self.count, self.mean, self.m2, engine=self.engine)
            self.count += whole
            values = values[rows:]
        self.pending = (values.clone() if self.on_device else values.copy()) if len(values) else None


# Anytime stopping: the rule is checked only at these sample counts (a geometric schedule from
# min_samples), never at chunk boundaries, so where a run stops does not depend on batch_size.
CHECK_GROWTH = 1.25
DEFAULT_MIN_SAMPLES = 16


def _checkpoints(first, cap):
    """Sample counts at which the stopping rule is checked: first, then x1.25 (at least +1)."""
    c = first
    while c < cap:
        yield c
        c = max(c + 1, int(np.ceil(c * CHECK_GROWTH)))
    yield cap


def _int_or_none(v, name, lowest):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        raise ValueError(f"{name}: expected an int >= {lowest} or None, got {v!r}")
    return int(v)


def _positive_or_none(v, name):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive number or None, got {v!r}")
    return float(v)


def estimate_shapley(value_fn, n_players=None, K=64, *, seed=0, antithetic=True, batch_size=None,
                     device=None, engine=None, progress=None, tol=None, rtol=None, max_evals=None,
                     max_seconds=None, min_samples=None, resume=None) -> ShapleyResult:
    """Estimate Shapley values by sampling permutations of the players.

    Args:
        value_fn: the game. Either a callable ``value_fn(masks) -> values`` where masks is a
            boolean ``[B, n]`` batch of coalitions (NumPy; a torch tensor on ``device`` when one
            is given) and values is ``[B]`` or ``[B, m]`` (m outputs explained together), or a
            :class:`~shapcam.Game` such as :class:`~shapcam.MaskedInputGame`.
        n_players: number of players n (taken from the game when value_fn is a Game).
        K: permutations to sample (>= 1), or None to sample until a stopping rule below fires.
            Each permutation costs n - 1 evaluations; v(all) and v(none) are evaluated once. With
            ``antithetic=True`` an odd K is rounded up to K + 1, because a permutation is only
            drawn together with its reverse; ``n_permutations`` reports the number drawn.
        seed: the permutations are a pure function of (seed, permutation index, n): the same seed
            gives the same estimate whatever batch_size, engine or device.
        antithetic: pair each permutation with its reverse (lower variance on smooth games); the
            standard error is then taken over pairs.
        batch_size: most coalitions per value_fn call (default: the game's, e.g. 16384 masks, or
            256 MB of masked inputs on the CPU / 1 GB on a GPU for MaskedInputGame).
        device: None (NumPy masks) or a torch device for the masks given to value_fn.
        engine: "native", "reference", or None for the best one built.
        progress: show a tqdm bar (None: only for long runs on a terminal).
        tol: stop once the largest standard error is at most tol (absolute, in value units).
        rtol: stop once the largest standard error is at most rtol times the range of the values
            (max - min over players, the largest over outputs).
        max_evals: never spend more evaluations than this in total (endpoints included); the
            run stops at the last whole sample that fits.
        max_seconds: stop at the first check after this much wall time.
        min_samples: samples drawn before tol/rtol may fire (default 16; a standard error from a
            handful of samples is not to be trusted). The rules are checked at sample counts
            min_samples, then x1.25, so where a run stops does not depend on batch_size.
        resume: a ShapleyResult of an earlier run on the same game, seed and antithetic setting:
            sampling continues from its next permutation, and the result is the one a single run
            to the new stopping point gives, bit for bit (K counts all permutations, the earlier
            ones included).

    Returns:
        ShapleyResult with values and stderr ``[n]`` (or ``[n, m]``), n_evals, n_permutations,
        n_samples, v_full, v_empty and ``stop_reason``: "K" (K permutations drawn), "tol" (tol
        or rtol met), "max_evals" or "max_seconds". The values always sum to v_full - v_empty
        (efficiency) up to float rounding.
    """
    game = as_game(value_fn, n_players, device)
    n = game.n_players
    if K is not None:
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
            raise TypeError(f"K: expected an int number of permutations or None, got {type(K).__name__}")
        if K < 1:
            raise ValueError(f"K: need at least 1 permutation, got {K}")
    tol, rtol = _positive_or_none(tol, "tol"), _positive_or_none(rtol, "rtol")
    max_seconds = _positive_or_none(max_seconds, "max_seconds")
    max_evals = _int_or_none(max_evals, "max_evals", 1)
    min_samples = _int_or_none(min_samples, "min_samples", 2) or DEFAULT_MIN_SAMPLES
    if K is None and tol is None and rtol is None and max_evals is None and max_seconds is None:
        raise ValueError("K=None samples until a rule fires: give tol, rtol, max_evals or max_seconds")
    if batch_size is None:
        batch_size = game.default_batch_size()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    seed = ops.check_seed(seed)
    pps = 2 if antithetic else 1
    t_start = time.perf_counter()

    ends, m = _values_2d(game.endpoints(), 2, None, "the empty and full coalitions")
    # Kept for the whole run: a copy, so a value_fn that returns a view of a buffer it reuses
    # cannot change v(none) / v(all) under us.
    ends = ends.clone() if is_torch(ends) else np.array(ends, copy=True)
    # One routing decision for the whole run: device values accumulate on the device with the
    # CUDA kernels; host values (or an explicit host engine) on the host.
    rt = ops.route(engine, is_cuda_array(ends))
    eng, on_device = rt.engine, rt.cuda
    if not on_device:
        _check_finite_host(host_numpy(ends), None, n)
    v_empty, v_full = ends[0], ends[1]
    mw = max(m, 1)

    if n == 1:
        K_eff = (int(K) + (int(K) % 2 if antithetic else 0)) if K is not None else pps
        values = (v_full - v_empty).reshape(1, mw)
        stderr = values * 0
        return _result(values, stderr, m, 2, K_eff, K_eff // pps, v_full, v_empty, seed, antithetic,
                       eng, game, "K", None)

    per_sample = pps * (n - 1)
    acc = _Accumulator(seed, n, mw, antithetic, v_empty, v_full, eng, on_device)
    if resume is not None:
        _resume_into(acc, resume, seed, antithetic, n, m, v_empty, v_full)
    # Samples K permutations make (antithetic: ceil(K / 2) pairs); None: no K cap.
    k_samples = -(-int(K) // pps) if K is not None else None
    cap = k_samples
    if max_evals is not None:
        by_evals = (max_evals - 2) // per_sample
        if by_evals < max(acc.count, 1):
            raise ValueError(f"max_evals={max_evals}: not even one more sample fits (each costs "
                             f"{per_sample} evaluations, plus 2 for the endpoints)")
        cap = by_evals if cap is None else min(cap, by_evals)
    anytime = tol is not None or rtol is not None or max_seconds is not None
    bounded = cap is not None
    if not bounded:  # K=None with tol/rtol/max_seconds only: unbounded, checked as it goes
        cap = np.iinfo(np.int64).max // (4 * per_sample)
    if cap < acc.count:
        raise ValueError(f"resume: the earlier run already has {acc.count} samples, more than "
                         f"this call's K / max_evals allow ({cap})")
    bar = progress_bar(cap * per_sample if bounded else 0, progress, desc="shapley", unit="eval",
                       auto_min=200_000)
    stop_reason = "K" if k_samples is not None and cap == k_samples else "max_evals"
    # An absolute schedule (not relative to a resumed run's count), so a resumed run checks where
    # a single run would have.
    stops = _checkpoints(min_samples, cap) if anytime else iter([cap])
    try:
        for target in stops:
            if target <= acc.count:
                continue
            e_lo, e_hi = acc.count * per_sample, target * per_sample
            for e0 in range(e_lo, e_hi, batch_size):
                e1 = min(e_hi, e0 + batch_size)
                v, _ = _values_2d(game.evaluate(seed, e0, e1, antithetic, eng), e1 - e0, m,
                                  f"evaluations [{e0}, {e1})")
                if not on_device:
                    _check_finite_host(host_numpy(v), e0, n)
                acc.push(v)
                bar.update(e1 - e0)
            if anytime and target < cap:
                if (tol is not None or rtol is not None) and _se_met(acc, tol, rtol):
                    stop_reason = "tol"
                    break
                if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
                    stop_reason = "max_seconds"
                    break
    finally:
        bar.close()
    assert acc.pending is None
    c = acc.count
    stderr = _stderr(acc)
    if on_device:
        import torch

        # A non-finite value anywhere reaches some player's marginals, hence the mean.
        if not bool(torch.isfinite(acc.mean).all()):
            raise ValueError("value_fn returned a non-finite value (NaN or inf) for some coalition")
    copy = (lambda a: a.clone()) if on_device else (lambda a: a.copy())
    state = {"mean": copy(acc.mean), "m2": copy(acc.m2), "count": c, "n": n, "m": m}
    return _result(acc.mean, stderr, m, 2 + c * per_sample, c * pps, c, v_full, v_empty, seed,
                   antithetic, eng, game, stop_reason, state)


def _stderr(acc):
    """Standard error of the mean over acc.count samples (NaN with fewer than 2). Correctly
    rounded division and sqrt on every device, so device and host agree to the bit: torch divides
    a CUDA tensor by a Python scalar as a multiplication by its reciprocal (1 ulp off), hence a
    device-tensor denominator; and sqrt, not ** 0.5."""
    c = acc.count
    if c < 2:
        return acc.mean * float("nan")
    if acc.on_device:
        import torch

        # torch.full, not torch.tensor: no blocking host-to-device copy
        denom = torch.full((), float((c - 1) * c), dtype=torch.float64, device=acc.m2.device)
        return torch.sqrt(acc.m2 / denom)
    return np.sqrt(acc.m2 / float((c - 1) * c))


def _se_met(acc, tol, rtol) -> bool:
    """The stopping rule: the largest standard error is at most tol, or at most rtol times the
    range of the values (the largest over outputs)."""
    se = host_numpy(_stderr(acc))
    worst = float(np.max(se))
    if not np.isfinite(worst):
        return False
    if tol is not None and worst <= tol:
        return True
    if rtol is not None:
        mean = host_numpy(acc.mean)
        spread = float(np.max(mean.max(0) - mean.min(0)))
        return worst <= rtol * spread
    return False


def _resume_into(acc, prev, seed, antithetic, n, m, v_empty, v_full):
    """Load an earlier run's Welford state, checking that it belongs to this game and setting."""
    state = getattr(prev, "state", None)
    if not isinstance(prev, ShapleyResult) or not state:
        raise TypeError("resume: expected the ShapleyResult of an earlier estimate_shapley run")
    if prev.seed != seed or prev.antithetic != antithetic:
        raise ValueError(f"resume: the earlier run used seed={prev.seed}, antithetic={prev.antithetic}; "
                         f"this one seed={seed}, antithetic={antithetic}")
    if state["n"] != n or state["m"] != m:
        raise ValueError(f"resume: the earlier run had {state['n']} players and {state['m']} outputs; "
                         f"this game has {n} and {m}")
    same = np.array_equal(host_numpy(acc.v_empty), host_numpy(_as_2d(prev.v_empty))) and \
        np.array_equal(host_numpy(acc.v_full), host_numpy(_as_2d(prev.v_full)))
    if not same:
        raise ValueError("resume: this game's v(none) / v(all) differ from the earlier run's: "
                         "not the same game")
    if acc.on_device:
        import torch

        acc.mean = torch.as_tensor(state["mean"], device=acc.mean.device).clone()
        acc.m2 = torch.as_tensor(state["m2"], device=acc.m2.device).clone()
    else:
        acc.mean, acc.m2 = np.array(host_numpy(state["mean"])), np.array(host_numpy(state["m2"]))
    acc.count = int(state["count"])


def _as_2d(v):
    return np.atleast_1d(host_numpy(v)) if not is_torch(v) else v.reshape(-1)


def _result(values, stderr, m, n_evals, K_eff, count, v_full, v_empty, seed, antithetic, eng, game,
            stop_reason="K", state=None):
    values, stderr = _to_game_type(values, game), _to_game_type(stderr, game)
    v_full, v_empty = _to_game_type(v_full, game), _to_game_type(v_empty, game)
    if m == 0:
        values, stderr = values[:, 0], stderr[:, 0]
        v_full, v_empty = v_full[0], v_empty[0]
        if not is_torch(v_full):
            v_full, v_empty = float(v_full), float(v_empty)
    return ShapleyResult(values=values, stderr=stderr, n_evals=int(n_evals), n_permutations=K_eff,
                         n_samples=int(count), v_full=v_full, v_empty=v_empty, seed=seed,
                         antithetic=antithetic, engine=eng, stop_reason=stop_reason, state=state)


def _to_game_type(a, game: Game):
    """NumPy for host games; a torch tensor on the game's device otherwise."""
    if game.device is None:
        return np.asarray(host_numpy(a), dtype=np.float64)
    import torch

    if is_torch(a):
        return a.to(game.device)
    return torch.as_tensor(np.asarray(a), device=game.device)
