"""shapcam's ops, with their input checks, dispatched to an engine.

Engines: ``"reference"`` (NumPy twin, shapcam/reference.py), ``"native"`` (shapcam._C: C++ on the
CPU, CUDA for device arrays when built with CUDA). ``engine=None`` picks native when it loaded.
Every op is a pure function of (seed, index range, n, antithetic) and its inputs, and every engine
returns the same bits.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import _engine, reference
from ._arrays import (cuda_pointer, cuda_stream, dtype_name, host_numpy, is_cuda_array, is_torch, resolve_device,
                      shape_of)

ENGINES = ("reference", "native")
_warned_no_cuda = False


def resolve_engine(engine: str | None) -> str:
    """None -> the best engine that loaded; otherwise checks the name and availability."""
    if engine is None:
        return "native" if _engine.native() is not None else "reference"
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES} or None, got {engine!r}")
    if engine == "native":
        _engine.require_native()
    return engine


def _use_cuda_kernels(engine: str) -> bool:
    """Device arrays go to the CUDA kernels when the native engine has them; else host + copy."""
    global _warned_no_cuda
    if engine == "native" and _engine.cuda_built():
        return True
    if engine == "native" and not _warned_no_cuda:
        _warned_no_cuda = True
        warnings.warn("shapcam._C was built without CUDA: device work is done on the CPU and "
                      "copied to the GPU (slower). Rebuild with nvcc on PATH for the CUDA engine.",
                      RuntimeWarning, stacklevel=3)
    return False


def _check_seed(seed):
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return int(seed) & 0xFFFFFFFFFFFFFFFF


def _check_range(lo, hi, name):
    if lo < 0 or hi < lo:
        raise ValueError(f"{name}: need 0 <= start <= stop, got [{lo}, {hi})")


def permutations(seed, k0, k1, n, antithetic=True, *, engine=None, device=None):
    """Permutations k0..k1-1 of n players: [K, n] int32, perm[k, t] = the player at position t.

    device: None for NumPy; a CUDA device gives a torch tensor built there by the CUDA engine.
    """
    return _permutations_op(seed, k0, k1, n, antithetic, engine, device, want="perm")


def ranks(seed, k0, k1, n, antithetic=True, *, engine=None, device=None):
    """Ranks (inverse permutations) of permutations k0..k1-1: [K, n] int32, rank[k, perm[k, t]] = t."""
    return _permutations_op(seed, k0, k1, n, antithetic, engine, device, want="rank")


def _permutations_op(seed, k0, k1, n, antithetic, engine, device, want):
    seed = _check_seed(seed)
    _check_range(k0, k1, f"{want} [k0, k1)")
    if n < 1:
        raise ValueError(f"n: need at least 1 player, got {n}")
    eng = resolve_engine(engine)
    dev = resolve_device(device)
    if dev is not None and dev.type == "cuda":
        import torch

        out = torch.empty((k1 - k0, n), dtype=torch.int32, device=dev)
        if _use_cuda_kernels(eng):
            d, ptr = cuda_pointer(out, want)
            args = (ptr, 0) if want == "perm" else (0, ptr)
            _engine.native().permutations_cuda(d, cuda_stream(out), seed, k0, k1, n, antithetic, *args)
        else:
            out.copy_(torch.from_numpy(_permutations_op(seed, k0, k1, n, antithetic, eng, None, want)))
        return out
    if eng == "reference":
        perm = reference.permutations(seed, k0, k1, n, antithetic)
        res = perm if want == "perm" else reference.ranks_of(perm)
    else:
        res = np.empty((k1 - k0, n), dtype=np.int32)
        args = (res, None) if want == "perm" else (None, res)
        _engine.native().permutations_cpu(seed, k0, k1, n, antithetic, *args)
    if dev is not None:
        import torch

        return torch.from_numpy(res).to(dev)
    return res


def masks(seed, e0, e1, n, antithetic=True, *, engine=None, out=None):
    """Prefix masks of evaluations [e0, e1): [B, n] bool, row b = coalition of eval e0+b.

    out: an optional [B, n] bool array to fill (NumPy, torch CPU or CUDA tensor).
    """
    seed = _check_seed(seed)
    _check_range(e0, e1, "chunk [e0, e1)")
    if n < 2:
        raise ValueError(f"n: the sampled coalitions need at least 2 players, got {n}")
    eng = resolve_engine(engine)
    B = e1 - e0
    if out is not None:
        if shape_of(out) != (B, n) or dtype_name(out) != "bool":
            raise ValueError(f"out: expected a [{B}, {n}] bool array, got {shape_of(out)} "
                             f"{dtype_name(out)}")
        if is_cuda_array(out):
            if _use_cuda_kernels(eng):
                dev, ptr = cuda_pointer(out, "out")
                _engine.native().masks_cuda(_device_of(out, dev), cuda_stream(out), seed, e0, e1, n,
                                            antithetic, ptr)
                return out
            _copy_into(out, masks(seed, e0, e1, n, antithetic, engine=eng))
            return out
    if eng == "reference":
        res = reference.masks(seed, e0, e1, n, antithetic)
        if out is None:
            return res
        host_numpy(out)[...] = res
        return out
    target = np.empty((B, n), dtype=bool) if out is None else _host_writable(out, "out")
    _engine.native().masks_cpu(seed, e0, e1, n, antithetic, target)
    return target if out is None else out


def _device_of(x, dev):
    if dev is not None:
        return dev
    import cupy  # a __cuda_array_interface__ producer that is not torch: CuPy/Numba

    return cupy.cuda.runtime.getDevice()


def _copy_into(dst, src_np):
    if is_torch(dst):
        import torch

        dst.copy_(torch.from_numpy(np.ascontiguousarray(src_np)))
    else:
        dst.set(np.ascontiguousarray(src_np))  # CuPy


def _host_writable(a, name):
    arr = host_numpy(a)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name}: must be a writable C-contiguous array")
    return arr


@dataclass
class MaskPlan:
    """Everything masked_apply needs that does not change between chunks, prepared once.

    x viewed as [outer, inner]; players_flat [inner] int32 with ids in 0..n-1; baseline a Python
    float or an array shaped like x (same array type, device and dtype as x).
    """

    x: object
    n: int
    outer: int
    inner: int
    players_flat: np.ndarray
    baseline: object
    players_dev: object = None

    @property
    def shape(self):
        return shape_of(self.x)

    @property
    def dtype(self):
        return dtype_name(self.x)


def plan_masked_apply(x, players, n=None, baseline=0.0) -> MaskPlan:
    """Check x, the player map and the baseline once; see masked_apply for their meaning."""
    xdt = dtype_name(x)
    if xdt not in ("float32", "float64"):
        raise TypeError(f"x: dtype must be float32 or float64, got {xdt}")
    shape = shape_of(x)
    if len(shape) == 0:
        raise ValueError("x: must have at least one dimension")
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
        base = float(baseline)
    else:
        base = _prepare_baseline(baseline, x, shape)
    x = _contiguous(x)
    return MaskPlan(x=x, n=int(n), outer=outer, inner=inner, players_flat=players_flat, baseline=base)


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


def masked_apply(seed, e0, e1, n, antithetic, x, players, baseline=0.0, *, out=None, engine=None):
    """The fused op: out[b] = where(mask_{e0+b}[players], x, baseline) for evaluations [e0, e1).

    x: [*S] float32/float64 (NumPy, torch CPU or CUDA tensor); players: integer ids in 0..n-1,
    broadcastable to S (a [h, w] map over [C, h, w] is the Shap-CAM game); baseline: a scalar or an
    array broadcastable to S; out: optional [B, *S] array of x's type, dtype and device, filled in
    place. Returns out ([B, *S]). Masks are never stored.
    """
    plan = plan_masked_apply(x, players, n, baseline)
    return apply_plan(plan, seed, e0, e1, antithetic, out=out, engine=engine)


def new_output(plan: MaskPlan, B: int):
    """An uninitialised [B, *S] buffer of x's array type, dtype and device."""
    if is_torch(plan.x):
        import torch

        return torch.empty((B,) + plan.shape, dtype=plan.x.dtype, device=plan.x.device)
    if is_cuda_array(plan.x):
        import cupy

        return cupy.empty((B,) + plan.shape, dtype=plan.dtype)
    return np.empty((B,) + plan.shape, dtype=plan.x.dtype)


def apply_plan(plan: MaskPlan, seed, e0, e1, antithetic, *, out=None, engine=None):
    """masked_apply over a prepared plan (the estimator's hot path)."""
    seed = _check_seed(seed)
    _check_range(e0, e1, "chunk [e0, e1)")
    n = plan.n
    if n < 2:
        raise ValueError(f"n: the sampled coalitions need at least 2 players, got {n}")
    eng = resolve_engine(engine)
    B = e1 - e0
    if out is None:
        out = new_output(plan, B)
    elif shape_of(out) != (B,) + plan.shape or dtype_name(out) != plan.dtype:
        raise ValueError(f"out: expected [{B}, *{plan.shape}] {plan.dtype}, got "
                         f"{shape_of(out)} {dtype_name(out)}")
    if is_cuda_array(plan.x) != is_cuda_array(out):
        raise ValueError("out: must live on the same device as x")
    if is_cuda_array(plan.x):
        if is_torch(plan.x) and is_torch(out) and out.device != plan.x.device:
            raise ValueError(f"out: on {out.device} but x is on {plan.x.device}")
        if _use_cuda_kernels(eng):
            _apply_cuda(plan, seed, e0, e1, antithetic, out)
            return out
        hplan = _host_copy(plan)
        res = np.empty((B,) + plan.shape, dtype=np.asarray(hplan.x).dtype)
        _apply_host(hplan, seed, e0, e1, antithetic, eng, res)
        _copy_into(out, res)
        return out
    _apply_host(plan, seed, e0, e1, antithetic, eng, _host_writable(out, "out"))
    return out


def _host_copy(plan):
    hx = host_numpy(plan.x)
    hb = plan.baseline if isinstance(plan.baseline, float) else host_numpy(plan.baseline)
    return MaskPlan(hx, plan.n, plan.outer, plan.inner, plan.players_flat, hb)


def _apply_host(plan, seed, e0, e1, antithetic, eng, target):
    """Host engines over a host plan, into the C-contiguous NumPy array target [B, *S]."""
    x = host_numpy(plan.x)
    if eng == "reference":
        players = plan.players_flat.reshape(plan.inner)
        xv = x.reshape(plan.outer, plan.inner)
        base = plan.baseline if isinstance(plan.baseline, float) else host_numpy(plan.baseline).reshape(plan.outer, plan.inner)
        res = reference.masked_apply(seed, e0, e1, plan.n, antithetic, xv, players, base)
        target.reshape(e1 - e0, plan.outer, plan.inner)[...] = res
        return target
    base = plan.baseline if isinstance(plan.baseline, float) else host_numpy(plan.baseline)
    _engine.native().masked_apply_cpu(seed, e0, e1, plan.n, antithetic, x, plan.outer, plan.inner,
                                      plan.players_flat, base, target)
    return target


def _apply_cuda(plan, seed, e0, e1, antithetic, out):
    dev, xptr = cuda_pointer(plan.x, "x")
    dev = _device_of(plan.x, dev)
    if plan.players_dev is None:
        plan.players_dev = _to_device_like(plan.players_flat, plan.x)
    _, pptr = cuda_pointer(plan.players_dev, "players")
    bptr, bscalar = 0, 0.0
    if isinstance(plan.baseline, float):
        bscalar = plan.baseline
    else:
        _, bptr = cuda_pointer(plan.baseline, "baseline")
    _, optr = cuda_pointer(out, "out")
    nbytes = 4 if plan.dtype == "float32" else 8
    _engine.native().masked_apply_cuda(dev, cuda_stream(out), seed, e0, e1, plan.n, antithetic,
                                       nbytes, xptr, plan.outer, plan.inner, pptr, bptr, bscalar,
                                       optr)


def _to_device_like(arr_np, like):
    if is_torch(like):
        import torch

        return torch.from_numpy(arr_np).to(like.device)
    import cupy

    return cupy.asarray(arr_np)


def accumulate(seed, k0, n_samples, n, antithetic, values, v_empty, v_full, count0, mean, m2, *,
               engine=None):
    """Push n_samples complete samples into the Welford state (mean, m2 [n, m] float64, in place).

    values [n_samples * pps * (n-1), m], v_empty and v_full [m], all float64 and on one device:
    NumPy arrays for the host engines, CUDA tensors for the CUDA engine. A sample is one
    permutation, or an antithetic pair (pps = 2); k0 is its first permutation.
    """
    seed = _check_seed(seed)
    eng = resolve_engine(engine)
    pps = 2 if antithetic else 1
    if k0 % pps:
        raise ValueError(f"k0: must start a sample (a multiple of {pps}), got {k0}")
    m = shape_of(mean)[1]
    if is_cuda_array(mean):
        if not _use_cuda_kernels(eng):
            raise ValueError("accumulate: device state needs the CUDA engine")
        ptrs = [cuda_pointer(a, name) for a, name in ((values, "values"), (v_empty, "v_empty"),
                                                     (v_full, "v_full"), (mean, "mean"), (m2, "m2"))]
        dev = _device_of(mean, ptrs[3][0])
        _engine.native().accumulate_cuda(dev, cuda_stream(mean), seed, k0, n_samples, n, m, antithetic,
                                         *[p[1] for p in ptrs[:3]], count0, ptrs[3][1], ptrs[4][1])
        return
    if eng == "reference":
        reference.accumulate(seed, k0, n_samples, n, antithetic, values, v_empty, v_full, count0,
                             mean, m2)
        return
    _engine.native().accumulate_cpu(seed, k0, n_samples, n, m, antithetic,
                                    np.ascontiguousarray(values, dtype=np.float64),
                                    np.ascontiguousarray(v_empty, dtype=np.float64),
                                    np.ascontiguousarray(v_full, dtype=np.float64), count0, mean, m2)
