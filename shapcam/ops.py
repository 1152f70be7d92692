"""shapcam's ops, with their input checks, dispatched to an engine.

Engines: ``"reference"`` (NumPy twin, shapcam/reference.py), ``"native"`` (shapcam._C: C++ on the
CPU, CUDA for device arrays when built with CUDA). ``engine=None`` picks native when it loaded.
Every op is a pure function of (seed, index range, n, antithetic: the sampling design, a bool or
the group size 1/2/4 of reference.group_of) and its inputs, and every engine
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
_warned_host_copy = False


def resolve_engine(engine: str | None) -> str:
    """None -> the best engine that loaded; otherwise checks the name and availability."""
    if engine is None:
        return "native" if _engine.native() is not None else "reference"
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES} or None, got {engine!r}")
    if engine == "native":
        _engine.require_native()
    return engine


@dataclass(frozen=True)
class Route:
    """Where an op runs, decided once per call by :func:`route`.

    engine: "reference" or "native" (the implementation that computes);
    cuda: the CUDA kernels run on the device arrays;
    host_copy: the arrays live on a device but a host engine computes, and results are copied back
        (only when the caller named a host engine explicitly).
    """

    engine: str
    cuda: bool = False
    host_copy: bool = False


_HOST_ROUTES = {e: Route(e) for e in ENGINES}


def route(engine: str | None, on_device: bool = False) -> Route:
    """The one dispatcher: (engine asked for, whether the arrays live on a CUDA device) -> Route.

    Host arrays go to the native C++ engine (or the reference with engine="reference"). Device
    arrays go to the CUDA kernels when the extension has them. Without them, engine=None is an
    error that says how to fix it — nothing silently moves through the host — and an explicit
    engine="native" / "reference" is the opt-in to compute on the host and copy (slower).
    """
    global _warned_host_copy
    eng = resolve_engine(engine)
    if not on_device:
        return _HOST_ROUTES[eng]  # immutable: one per engine (a run asks ~10 times)
    if eng == "native" and _engine.cuda_built():
        return Route(eng, cuda=True)
    if engine is None:
        raise RuntimeError(
            "the data is on a CUDA device but shapcam._C has no CUDA kernels "
            f"({'not built with CUDA' if _engine.native() is not None else 'extension not loaded'}); "
            f"{_engine.FIX_CUDA}; or pass engine='native' (or 'reference') to compute on the host "
            "and copy to the device (slower)")
    if eng == "native" and not _warned_host_copy:
        _warned_host_copy = True
        warnings.warn("engine='native' on device data without CUDA kernels: computing on the CPU and "
                      "copying to the GPU (slower)", RuntimeWarning, stacklevel=3)
    return Route(eng, host_copy=True)


def check_seed(seed) -> int:
    """A seed as the engines take it: an int in [0, 2^64). Larger or negative ints are refused
    (reducing them mod 2^64 would make two different seeds give the same permutations)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed: expected an int in [0, 2^64), got {seed}")
    return int(seed)


def _check_range(lo, hi, name):
    for v, what in ((lo, "start"), (hi, "stop")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: {what} must be an int, got {type(v).__name__}")
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


def _check_n(n, lowest):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int number of players, got {type(n).__name__}")
    if n < lowest:
        raise ValueError(f"n: need at least {lowest} players, got {n}")
    if n > 2**31 - 1:
        raise ValueError(f"n: at most 2^31 - 1 players (ids are int32), got {n}")
    return int(n)


def _permutations_op(seed, k0, k1, n, antithetic, engine, device, want):
    antithetic = reference.group_of(antithetic)
    seed = check_seed(seed)
    _check_range(k0, k1, f"{want} [k0, k1)")
    n = _check_n(n, 1)
    dev = resolve_device(device)
    r = route(engine, dev is not None and dev.type == "cuda")
    if r.cuda:
        import torch

        out = torch.empty((k1 - k0, n), dtype=torch.int32, device=dev)
        d, ptr = cuda_pointer(out, want)
        args = (ptr, 0) if want == "perm" else (0, ptr)
        _work, wptr = _perm_work(out, d, n, k1 - k0)
        _engine.native().permutations_cuda(d, cuda_stream(out), seed, k0, k1, n, antithetic, *args,
                                           wptr)
        return out
    if r.engine == "reference":
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
    antithetic = reference.group_of(antithetic)
    seed = check_seed(seed)
    _check_range(e0, e1, "chunk [e0, e1)")
    n = _check_n(n, 2)
    B = e1 - e0
    if out is not None and (shape_of(out) != (B, n) or dtype_name(out) != "bool"):
        raise ValueError(f"out: expected a [{B}, {n}] bool array, got {shape_of(out)} "
                         f"{dtype_name(out)}")
    r = route(engine, out is not None and is_cuda_array(out))
    if r.cuda:
        dev, ptr = cuda_pointer(out, "out")
        dev = _device_of(out, dev)
        _work, wptr = _perm_work(out, dev, n, _chunk_perms(e0, e1, n))
        _engine.native().masks_cuda(dev, cuda_stream(out), seed, e0, e1, n, antithetic, ptr, wptr)
        return out
    if r.host_copy:
        _copy_into(out, masks(seed, e0, e1, n, antithetic, engine=r.engine))
        return out
    if r.engine == "reference":
        res = reference.masks(seed, e0, e1, n, antithetic)
        if out is None:
            return res
        _host_writable(out, "out")[...] = res
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


def _device_empty(like, shape, dtype):
    """An uninitialised device array beside `like` (torch or CuPy), from that framework's allocator."""
    if is_torch(like):
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    import cupy

    return cupy.empty(shape, dtype=dtype)


# CUDA: a permutation lives in a block's shared memory up to cuda_max_players(device) players
# (~29 K on an H100); beyond, each op gets a global-memory workspace from the caller's framework
# (csrc/cuda/ops_cuda.h). Same bits either way; tests set this flag to take the global path at
# small n.
FORCE_GLOBAL_PERMUTATIONS = False
_SMEM_PLAYERS: dict = {}


def _perm_work(like, device, n, perms):
    """(workspace, pointer) for a CUDA op touching `perms` permutations of n players: (None, 0)
    when they fit shared memory. Keep the workspace alive until the op is enqueued (the framework's
    allocator reuses it in stream order)."""
    nat = _engine.native()
    limit = _SMEM_PLAYERS.get(device)
    if limit is None:
        limit = _SMEM_PLAYERS[device] = int(nat.cuda_max_players(device))
    if n <= limit and not FORCE_GLOBAL_PERMUTATIONS:
        return None, 0
    work = _device_empty(like, (max(perms, 1), int(nat.permutation_work_words(n))), "int32")
    return work, cuda_pointer(work, "work")[1]


def _chunk_perms(e0, e1, n):
    """Permutations that evaluations [e0, e1) touch."""
    return (e1 - 1) // (n - 1) - e0 // (n - 1) + 1 if e1 > e0 else 0


def _host_writable(a, name):
    arr = host_numpy(a)
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name}: must be a writable C-contiguous array")
    return arr


def masked_apply(seed, e0, e1, n, antithetic, x, players, baseline=0.0, *, out=None, engine=None):
    """The fused op: out[b] = where(mask_{e0+b}[players], x, baseline) for evaluations [e0, e1).

    x: [*S] float32/float64 (NumPy, torch CPU or CUDA tensor); players: integer ids in 0..n-1,
    broadcastable to S (a [h, w] map over [C, h, w] is the Shap-CAM game); baseline: a scalar or an
    array broadcastable to S; out: optional [B, *S] array of x's type, dtype and device, filled in
    place. Returns out ([B, *S]). Masks are never stored.
    """
    from .games import MaskPlan

    plan = MaskPlan.build(x, players, n, baseline)
    return apply_plan(plan, seed, e0, e1, antithetic, out=out, engine=engine)


def apply_plan(plan, seed, e0, e1, antithetic, *, out=None, engine=None):
    """masked_apply over a prepared :class:`~shapcam.games.MaskPlan` (the estimator's hot path)."""
    antithetic = reference.group_of(antithetic)
    seed = check_seed(seed)
    _check_range(e0, e1, "chunk [e0, e1)")
    n = plan.n
    if n < 2:
        raise ValueError(f"n: the sampled coalitions need at least 2 players, got {n}")
    B = e1 - e0
    if out is None:
        out = plan.new_output(B)
    elif shape_of(out) != (B,) + plan.shape or dtype_name(out) != plan.dtype:
        raise ValueError(f"out: expected [{B}, *{plan.shape}] {plan.dtype}, got "
                         f"{shape_of(out)} {dtype_name(out)}")
    on_device = is_cuda_array(plan.x)
    if on_device != is_cuda_array(out):
        raise ValueError("out: must live on the same device as x")
    if not on_device:
        for name, a in (("x", plan.x), ("baseline", plan.baseline)):
            if not isinstance(a, float) and np.may_share_memory(host_numpy(out), host_numpy(a)):
                raise ValueError(f"out: overlaps {name} in memory; pass a separate output buffer")
    if on_device and is_torch(plan.x) and is_torch(out) and out.device != plan.x.device:
        raise ValueError(f"out: on {out.device} but x is on {plan.x.device}")
    r = route(engine, on_device)
    if r.cuda:
        _apply_cuda(plan, seed, e0, e1, antithetic, out)
    elif r.host_copy:
        hplan = plan.host()
        res = np.empty((B,) + plan.shape, dtype=np.asarray(hplan.x).dtype)
        _apply_host(hplan, seed, e0, e1, antithetic, r.engine, res)
        _copy_into(out, res)
    else:
        _apply_host(plan, seed, e0, e1, antithetic, r.engine, _host_writable(out, "out"))
    return out


def _apply_host(plan, seed, e0, e1, antithetic, eng, target):
    """Host engines over a host plan, into the C-contiguous NumPy array target [B, *S]."""
    x = host_numpy(plan.x)
    base = plan.baseline if isinstance(plan.baseline, float) else host_numpy(plan.baseline)
    if eng == "reference":
        players = plan.players_flat.reshape(plan.inner)
        xv = x.reshape(plan.outer, plan.inner)
        base = base if isinstance(base, float) else base.reshape(plan.outer, plan.inner)
        res = reference.masked_apply(seed, e0, e1, plan.n, antithetic, xv, players, base)
        target.reshape(e1 - e0, plan.outer, plan.inner)[...] = res
        return target
    _engine.native().masked_apply_cpu(seed, e0, e1, plan.n, antithetic, x, plan.outer, plan.inner,
                                      plan.players_flat, base, target)
    return target


def _apply_cuda(plan, seed, e0, e1, antithetic, out):
    dev, xptr = cuda_pointer(plan.x, "x")
    dev = _device_of(plan.x, dev)
    _, pptr = cuda_pointer(plan.players_on_device(), "players")
    bptr, bscalar = 0, 0.0
    if isinstance(plan.baseline, float):
        bscalar = plan.baseline
    else:
        _, bptr = cuda_pointer(plan.baseline, "baseline")
    _, optr = cuda_pointer(out, "out")
    nbytes = 4 if plan.dtype == "float32" else 8
    _work, wptr = _perm_work(out, dev, plan.n, _chunk_perms(e0, e1, plan.n))
    _engine.native().masked_apply_cuda(dev, cuda_stream(out), seed, e0, e1, plan.n, antithetic,
                                       nbytes, xptr, plan.outer, plan.inner, pptr, bptr, bscalar,
                                       optr, wptr)


def prefix_walk(game, seed, e0, e1, antithetic, *, out=None, engine=None):
    """z of evaluations [e0, e1) of a :class:`~shapcam.games.CellTableGame`: [B, d] in the
    tables' array type, dtype and device (the incremental walk of csrc/include/shapcam/walk.h).
    out: optional [B, d] buffer to fill."""
    antithetic = reference.group_of(antithetic)
    seed = check_seed(seed)
    _check_range(e0, e1, "chunk [e0, e1)")
    n = _check_n(game.n_players, 2)
    B, d = e1 - e0, game.d
    T = game.tables
    if out is None:
        out = _empty_like_array(T, (B, d))
    elif shape_of(out) != (B, d) or dtype_name(out) != dtype_name(T):
        raise ValueError(f"out: expected [{B}, {d}] {dtype_name(T)}, got {shape_of(out)} {dtype_name(out)}")
    on_device = is_cuda_array(T)
    if on_device != is_cuda_array(out):
        raise ValueError("out: must live on the same device as the tables")
    r = route(engine, on_device)
    if r.cuda:
        mem, cof = game.structure_on_device()
        dev, tptr = cuda_pointer(T, "tables")
        dev = _device_of(T, dev)
        _work, wptr = _perm_work(out, dev, n, _chunk_perms(e0, e1, n))
        _engine.native().prefix_walk_cuda(
            dev, cuda_stream(out), seed, e0, e1, n, antithetic,
            4 if dtype_name(T) == "float32" else 8, tptr, game.n_cells, game.cell_size, d,
            cuda_pointer(mem, "members")[1], cuda_pointer(cof, "cell_of")[1],
            cuda_pointer(game.z_empty, "z_empty")[1], cuda_pointer(out, "out")[1], wptr)
        return out
    hT, hz = host_numpy(T), host_numpy(game.z_empty)
    target = np.empty((B, d), dtype=hT.dtype) if r.host_copy else _host_writable(out, "out")
    if r.engine == "reference":
        target[...] = reference.prefix_walk(seed, e0, e1, n, antithetic, hT, game.members,
                                            game.cell_of, hz)
    else:
        _engine.native().prefix_walk_cpu(seed, e0, e1, n, antithetic, hT, game.n_cells,
                                         game.cell_size, d, game.members, game.cell_of, hz, target)
    if r.host_copy:
        _copy_into(out, target)
    return out


def _empty_like_array(like, shape):
    if is_torch(like):
        import torch

        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if is_cuda_array(like):
        import cupy

        return cupy.empty(shape, dtype=dtype_name(like))
    return np.empty(shape, dtype=np.asarray(like).dtype)


def accumulate(seed, k0, n_samples, n, antithetic, values, v_empty, v_full, count0, mean, m2, *,
               engine=None, block=0, base=None):
    """Push n_samples complete samples into the Welford state (mean, m2 [n, m] float64, in place).

    values [n_samples * pps * (n-1), m], v_empty and v_full [m], all float64 and on one device:
    NumPy arrays for the host engines, CUDA tensors for the CUDA engine. A sample is one group of
    pps permutations of the design (1 plain, 2 antithetic, 4 stratified); k0 is its first
    permutation.
    block > 0: the estimator's fixed-shape sum (accumulate.h): samples go into the state of their
    block of ``block`` samples, and each finished block is folded into ``base`` = (base_mean,
    base_m2), like mean and m2; count0 counts every sample pushed before (base and block).
    """
    antithetic = reference.group_of(antithetic)
    seed = check_seed(seed)
    n = _check_n(n, 2)
    _check_range(k0, k0, "k0")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
        raise ValueError(f"n_samples: expected an int >= 0, got {n_samples!r}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 0:
        raise ValueError(f"block: expected an int >= 0, got {block!r}")
    if block and (base is None or len(base) != 2):
        raise ValueError("block > 0 needs base=(base_mean, base_m2)")
    pps = antithetic
    if k0 % pps:
        raise ValueError(f"k0: must start a sample (a multiple of {pps}), got {k0}")
    m = shape_of(mean)[1]
    base_mean, base_m2 = base if block else (None, None)
    r = route(engine, is_cuda_array(mean))
    if r.host_copy:
        raise ValueError("accumulate: a device state needs the CUDA engine")
    if r.cuda:
        arrays = ((values, "values"), (v_empty, "v_empty"), (v_full, "v_full"), (mean, "mean"),
                  (m2, "m2")) + (((base_mean, "base_mean"), (base_m2, "base_m2")) if block else ())
        ptrs = [cuda_pointer(a, name) for a, name in arrays]
        dev = _device_of(mean, ptrs[3][0])
        # The ranks' scratch comes from the caller's framework (its caching allocator), not from
        # a cudaMalloc inside the extension.
        scratch = _device_empty(mean, (max(n_samples, 0) * pps, n), "int32")
        _work, wptr = _perm_work(mean, dev, n, n_samples * pps)
        _engine.native().accumulate_cuda(dev, cuda_stream(mean), seed, k0, n_samples, n, m, antithetic,
                                         *[p[1] for p in ptrs[:3]], count0, ptrs[3][1], ptrs[4][1],
                                         cuda_pointer(scratch, "scratch")[1] if n_samples > 0 else 0,
                                         int(block), ptrs[5][1] if block else 0,
                                         ptrs[6][1] if block else 0, wptr)
        return
    if r.engine == "reference":
        reference.accumulate(seed, k0, n_samples, n, antithetic, values, v_empty, v_full, count0,
                             mean, m2, block, base_mean, base_m2)
        return
    _engine.native().accumulate_cpu(seed, k0, n_samples, n, m, antithetic,
                                    np.ascontiguousarray(values, dtype=np.float64),
                                    np.ascontiguousarray(v_empty, dtype=np.float64),
                                    np.ascontiguousarray(v_full, dtype=np.float64), count0, mean, m2,
                                    int(block), base_mean, base_m2)
