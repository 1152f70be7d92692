"""Engine throughput: permutations/s and the fused masked apply's GB/s, for the reference, the
native engine and the naive torch code a user would write, beside a memcpy of the same bytes.

    pytest benchmarks/bench_engine.py          # from the repository root, after `make setup`
"""
import numpy as np
import pytest

from conftest import SIZES, TINY, evals_for
from shapcam import _engine, ops
from shapcam.games import MaskPlan

HOST = ["reference"] + (["native"] if _engine.native() is not None else [])


@pytest.mark.parametrize("engine", HOST)
@pytest.mark.parametrize("n", [30, 49, 196])
def bench_permutations(benchmark, record, engine, n):
    K = 256 if TINY else (2048 if engine == "reference" else 65536)
    benchmark(ops.ranks, 0, 0, K, n, True, engine=engine)
    record(f"permutations n={n}", f"{engine}", items=K, unit="perm")


def _setup(shape, pshape, n, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    players = np.arange(int(np.prod(pshape))).reshape(pshape) % n
    return x, players


@pytest.mark.parametrize("name,shape,pshape,n", SIZES, ids=[s[0] for s in SIZES])
def bench_memcpy(benchmark, record, name, shape, pshape, n):
    B = evals_for(shape)
    src = np.ones((B,) + shape, np.float32)
    dst = np.empty_like(src)
    benchmark(np.copyto, dst, src)
    record(f"masked_apply {name}", "memcpy (same bytes)", bytes=dst.nbytes)


@pytest.mark.parametrize("engine", HOST)
@pytest.mark.parametrize("name,shape,pshape,n", SIZES, ids=[s[0] for s in SIZES])
def bench_masked_apply(benchmark, record, engine, name, shape, pshape, n):
    x, players = _setup(shape, pshape, n)
    B = evals_for(shape)
    if engine == "reference":
        B = min(B, max(1, evals_for(shape) // 16))  # the reference is slow: time a slice
    plan = MaskPlan.build(x, players, n)
    out = np.empty((B,) + shape, np.float32)
    benchmark(ops.apply_plan, plan, 0, 0, B, True, out=out, engine=engine)
    record(f"masked_apply {name}", engine, bytes=out.nbytes)


@pytest.mark.parametrize("name,shape,pshape,n", SIZES, ids=[s[0] for s in SIZES])
def bench_masked_apply_naive_torch(benchmark, record, name, shape, pshape, n):
    """What a user writes without shapcam: argsort of random keys, rank < t, multiply."""
    torch = pytest.importorskip("torch")
    x, players = _setup(shape, pshape, n)
    B = evals_for(shape)
    xt = torch.from_numpy(x)
    pl = torch.from_numpy(np.broadcast_to(players, shape).copy()).long()
    gen = torch.Generator().manual_seed(0)

    def naive():
        K = B // (n - 1) + 1
        rank = torch.rand(K, n, generator=gen).argsort(1).argsort(1)
        e = torch.arange(B)
        k, t = e // (n - 1), e % (n - 1) + 1
        mask = (rank[k] < t[:, None]).to(xt.dtype)  # [B, n]
        return xt[None] * mask[:, pl]               # [B, *shape]

    out = benchmark(naive)
    record(f"masked_apply {name}", "naive torch", bytes=out.numel() * 4)
