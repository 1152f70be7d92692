"""The CUDA engine against the CPU engine, bit for bit; streams; device and dtype errors.

Skipped where no GPU is present (or shapcam._C was built without CUDA); run them on a GPU machine
(benchmarks/gpu_check.sh does, also under compute-sanitizer).
"""
import itertools

import numpy as np
import pytest

from conftest import requires_cuda
from games_lib import table_game
import shapcam
from shapcam import ops
from shapcam.games import MaskPlan

pytestmark = [requires_cuda, pytest.mark.cuda]

torch = pytest.importorskip("torch")
DEV = "cuda"


@pytest.mark.parametrize("n", [2, 3, 49, 196, 1001, 5000])
@pytest.mark.parametrize("antithetic", [True, False, 4])  # 4: stratified blocks
def test_permutations_ranks_masks_equal_cpu(n, antithetic):
    for seed in (0, 7, 2**63 + 5):
        for want in ("permutations", "ranks"):
            f = getattr(ops, want)
            cpu = f(seed, 3, 70, n, antithetic, engine="native")
            gpu = f(seed, 3, 70, n, antithetic, device=DEV)
            assert gpu.is_cuda and gpu.dtype == torch.int32
            np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)
        e0, e1 = 11, 11 + 5 * (n - 1) + 3
        out = torch.empty((e1 - e0, n), dtype=torch.bool, device=DEV)
        ops.masks(seed, e0, e1, n, antithetic, out=out)
        np.testing.assert_array_equal(out.cpu().numpy(), ops.masks(seed, e0, e1, n, antithetic, engine="native"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("baseline_kind", ["scalar", "full"])
@pytest.mark.parametrize("shape,pshape,n", [
    ((512, 14, 14), (14, 14), 196),
    ((2048, 7, 7), (7, 7), 49),
    ((3, 16, 16), (3, 16, 16), 768),
    ((30,), (30,), 30),
    ((4, 5, 6), (5, 1), 5),
])
def test_masked_apply_equals_cpu(dtype, baseline_kind, shape, pshape, n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    players = torch.randint(0, n, pshape, generator=g)
    if players.numel() >= n:  # every player owns at least one element
        players.view(-1)[:n] = torch.arange(n)
    baseline = 0.25 if baseline_kind == "scalar" else torch.randn(shape, generator=g, dtype=dtype)
    for e0, e1 in ((0, 1), (5, 5 + 3 * (n - 1) + 7), (40 * (n - 1) - 3, 40 * (n - 1) + 300)):
        cpu = ops.masked_apply(9, e0, e1, n, True, x.numpy(), players.numpy(),
                               baseline if baseline_kind == "scalar" else baseline.numpy(), engine="native")
        out = torch.full((e1 - e0,) + shape, float("nan"), dtype=dtype, device=DEV)  # poisoned
        xb = baseline if baseline_kind == "scalar" else baseline.to(DEV)
        res = ops.masked_apply(9, e0, e1, n, True, x.to(DEV), players, xb, out=out)
        assert res is out
        np.testing.assert_array_equal(out.cpu().numpy(), cpu)


def test_accumulate_equals_cpu():
    rng = np.random.default_rng(1)
    n, m, S = 49, 3, 9
    for anti in (True, False):
        pps = 2 if anti else 1
        values = rng.normal(size=(S * pps * (n - 1), m))
        ve, vf = rng.normal(size=m), rng.normal(size=m)
        mean, m2 = np.zeros((n, m)), np.zeros((n, m))
        ops.accumulate(3, 0, S, n, anti, values, ve, vf, 0, mean, m2, engine="native")
        gm, g2 = torch.zeros((n, m), dtype=torch.float64, device=DEV), torch.zeros((n, m), dtype=torch.float64, device=DEV)
        t = lambda a: torch.from_numpy(a).to(DEV)
        ops.accumulate(3, 0, S, n, anti, t(values), t(ve), t(vf), 0, gm, g2)
        # Same operations in the same order, no FMA contraction (--fmad=false): identical bits.
        np.testing.assert_array_equal(gm.cpu().numpy(), mean)
        np.testing.assert_array_equal(g2.cpu().numpy(), m2)


def test_blocked_accumulate_and_merge_equal_cpu():
    # The fixed-shape sum (blocks folded in the engine) and the estimator's host/device merge.
    from shapcam.estimator import _merge, _Welford

    rng = np.random.default_rng(2)
    n, m, S, B = 37, 2, 11, 4
    values = rng.normal(size=(S * 2 * (n - 1), m))
    ve, vf = rng.normal(size=m), rng.normal(size=m)
    host = [np.zeros((n, m)) for _ in range(4)]
    ops.accumulate(3, 0, S, n, True, values, ve, vf, 0, host[0], host[1], engine="native", block=B,
                   base=(host[2], host[3]))
    t = lambda a: torch.from_numpy(a).to(DEV)
    dev = [torch.zeros((n, m), dtype=torch.float64, device=DEV) for _ in range(4)]
    ops.accumulate(3, 0, S, n, True, t(values), t(ve), t(vf), 0, dev[0], dev[1], block=B,
                   base=(dev[2], dev[3]))
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(d.cpu().numpy(), h)
    hm = _merge(_Welford(host[2], host[3], 8), _Welford(host[0], host[1], 3))
    dm = _merge(_Welford(dev[2], dev[3], 8), _Welford(dev[0], dev[1], 3))
    np.testing.assert_array_equal(dm.mean.cpu().numpy(), hm.mean)
    np.testing.assert_array_equal(dm.m2.cpu().numpy(), hm.m2)


@pytest.mark.parametrize("sampler", ["plain", "antithetic", "stratified"])
def test_estimate_on_device_equals_host(sampler):
    g = table_game(10, 3)
    table_mask_fn = lambda m: torch.from_numpy(g(m.cpu().numpy())).to(m.device)
    kw = dict(sampler=sampler, antithetic=sampler != "plain")
    host = shapcam.estimate_shapley(g, 10, 33, seed=4, batch_size=50, **kw)
    dev = shapcam.estimate_shapley(table_mask_fn, 10, 33, seed=4, batch_size=17, device=DEV, **kw)
    assert dev.values.is_cuda and dev.stderr.is_cuda and dev.sampler == sampler
    np.testing.assert_array_equal(dev.values.cpu().numpy(), host.values)
    np.testing.assert_array_equal(dev.stderr.cpu().numpy(), host.stderr)


def test_masked_input_game_on_device_equals_host():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(64, 7, 7, generator=gen)
    W = torch.randn(10, 64, generator=gen, dtype=torch.float64)

    def head(feats):  # [B, 64, 7, 7] -> [B, 10]: GAP + linear, then softmax
        z = feats.double().mean((2, 3)) @ W.to(feats.device).T
        return torch.softmax(z, 1)

    players = torch.arange(49).reshape(7, 7)
    host = shapcam.estimate_shapley(shapcam.MaskedInputGame(head, A, players=players), K=16, seed=1, batch_size=100)
    dev = shapcam.estimate_shapley(shapcam.MaskedInputGame(head, A.to(DEV), players=players), K=16, seed=1, batch_size=77)
    assert dev.values.is_cuda
    # The head's reductions round differently on the GPU: values agree to float64 rounding of the
    # softmax (measured ~1e-16); the masked inputs themselves are bit-identical (test above).
    np.testing.assert_allclose(dev.values.cpu().numpy(), host.values.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dev.values.sum(0).cpu().numpy(), (dev.v_full - dev.v_empty).cpu().numpy(), atol=1e-12)


def test_caller_stream_is_honoured():
    x = torch.randn(512, 14, 14, device=DEV)
    players = torch.arange(196).reshape(14, 14)
    want = ops.masked_apply(5, 0, 300, 196, True, x.cpu().numpy(), players.numpy(), engine="native")
    s = torch.cuda.Stream()
    out = torch.empty((300, 512, 14, 14), device=DEV)
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)  # keeps s busy: a launch on another stream would race ahead
        out.fill_(float("nan"))
        ops.masked_apply(5, 0, 300, 196, True, x, players, out=out)
    s.synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), want)
    # Graph capture only admits work on the capturing stream: the kernel must be launched there.
    g = torch.cuda.CUDAGraph()
    out2 = torch.full_like(out, float("nan"))
    plan = MaskPlan.build(x, players, 196)
    ops.apply_plan(plan, 5, 0, 300, True, out=out2)  # warm-up outside capture
    out2.fill_(float("nan"))
    with torch.cuda.graph(g):
        ops.apply_plan(plan, 5, 0, 300, True, out=out2)
    g.replay()
    torch.cuda.synchronize()
    np.testing.assert_array_equal(out2.cpu().numpy(), want)


def test_bad_device_input():
    x = torch.randn(8, 3, 3, device=DEV)
    players = torch.arange(9).reshape(3, 3)
    with pytest.raises(ValueError, match="same device"):
        ops.masked_apply(0, 0, 4, 9, True, x, players, out=np.empty((4, 8, 3, 3), np.float32))
    with pytest.raises(TypeError, match="x: dtype"):
        ops.masked_apply(0, 0, 4, 9, True, x.half(), players)
    with pytest.raises(ValueError, match="baseline"):
        ops.masked_apply(0, 0, 4, 9, True, x, players, torch.zeros(8, 3, 3))
    from shapcam import _C

    host = torch.empty((4, 8, 3, 3))
    with pytest.raises(ValueError, match="host pointer|not a CUDA pointer"):
        _C.masked_apply_cuda(0, 0, 0, 0, 4, 9, True, 4, x.data_ptr(), 8, 9,
                             players.int().to(DEV).data_ptr(), 0, 0.0, host.data_ptr())
    # Beyond the shared-memory limit the device builds permutations in a global workspace.
    np.testing.assert_array_equal(ops.ranks(0, 0, 1, 10**6, device=DEV).cpu().numpy(),
                                  ops.ranks(0, 0, 1, 10**6, engine="native"))
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="cuda:1"):
            _C.masked_apply_cuda(0, 0, 0, 0, 4, 9, True, 4, x.data_ptr(), 8, 9,
                                 players.int().to(DEV).data_ptr(), 0, 0.0,
                                 torch.empty((4, 8, 3, 3), device="cuda:1").data_ptr())


def test_raw_cuda_entries_check_extents_and_aliasing():
    """The CUDA bindings take raw pointers: a buffer too small for the shapes is refused (its
    allocation's extent, from cuMemGetAddressRange), and outputs may not overlap inputs."""
    from shapcam import _C

    x = torch.randn(8, 9, device=DEV)
    pl = torch.arange(9, dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="overlaps x"):
        _C.masked_apply_cuda(0, 0, 0, 0, 1, 9, True, 4, x.data_ptr(), 8, 9, pl.data_ptr(), 0, 0.0,
                             x.data_ptr())
    r = torch.empty((3, 5), dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="overlaps"):
        _C.permutations_cuda(0, 0, 1, 0, 3, 5, True, r.data_ptr(), r.data_ptr())
    with pytest.raises(ValueError, match="2\\^31"):
        _C.permutations_cuda(0, 0, 1, 0, 3, 2**31, True, r.data_ptr(), 0)
    st = torch.zeros((5, 1), dtype=torch.float64, device=DEV)
    vals = torch.zeros((8, 1), dtype=torch.float64, device=DEV)
    e = torch.zeros(1, dtype=torch.float64, device=DEV)
    scratch = torch.empty((2, 5), dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="overlaps"):
        _C.accumulate_cuda(0, 0, 0, 0, 1, 5, 1, True, vals.data_ptr(), e.data_ptr(), e.data_ptr(), 0,
                           st.data_ptr(), st.data_ptr(), scratch.data_ptr())


def test_raw_cuda_entry_refuses_a_buffer_past_its_allocation():
    """The extent of a raw pointer's allocation (cuMemGetAddressRange) bounds what a binding may
    write there."""
    from shapcam import _C

    x = torch.randn(8, 9, device=DEV)
    pl = torch.arange(9, dtype=torch.int32, device=DEV)
    # A raw cudaMalloc of its own (torch's caching allocator may hand out a slice of a larger
    # segment, or of expandable segments, whose extent is not the tensor's: seen on an H100).
    cupy = pytest.importorskip("cupy")
    nbytes = 64 * 2**20
    raw = cupy.cuda.runtime.malloc(nbytes)
    try:
        near_end = raw + nbytes - 40  # 40 bytes before the allocation's end
        with pytest.raises(ValueError, match="allocation holds only"):
            _C.masked_apply_cuda(0, 0, 0, 0, 4, 9, True, 4, x.data_ptr(), 8, 9, pl.data_ptr(), 0,
                                 0.0, near_end)
    finally:
        cupy.cuda.runtime.free(raw)


def test_keep_flags_beyond_the_shared_memory_budget_fall_back():
    """Near the player limit the keep flags no longer fit beside the permutation in shared
    memory: the kernel must take its per-element path, not fail with an attribute error."""
    from shapcam import _C

    n = int(_C.cuda_max_players(0))
    x = torch.randn(2, 16000, device=DEV)  # 16000 keep flags (under kMaxKeepSmem) beside ~8n bytes
    players = torch.arange(16000)
    got = ops.masked_apply(3, 0, 3, n, True, x, players)
    want = ops.masked_apply(3, 0, 3, n, True, x.cpu().numpy(), players.numpy(), engine="native")
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_shapcam_on_gpu_equals_cpu():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval().double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    cpu = shapcam.ShapCAM(model, "layer4", K=8).explain(x, targets=[1, 2])
    gpu = shapcam.ShapCAM(model.to(DEV), "layer4", K=8).explain(x.to(DEV), targets=[1, 2])
    assert gpu.maps.is_cuda
    # Same permutations and bit-identical masked features; the head's float64 reductions differ
    # between cuDNN and the CPU by rounding only.
    np.testing.assert_allclose(gpu.values.cpu().numpy(), cpu.values.numpy(), atol=1e-12)
    assert gpu.efficiency_gap.abs().max() < 1e-12
    for cls in (shapcam.GradCAM, shapcam.ScoreCAM):
        np.testing.assert_allclose(cls(model, "layer4").explain(x.to(DEV), targets=[1, 2]).maps.cpu().numpy(),
                                   cls(model.cpu(), "layer4").explain(x, targets=[1, 2]).maps.numpy(), atol=1e-5)
        model.to(DEV)


def test_prefix_walk_cuda_equals_reference():
    from shapcam.games import CellTableGame

    rng = np.random.default_rng(0)
    cells = rng.permutation(40).reshape(10, 4)
    for dt in (np.float32, np.float64):
        T = rng.normal(size=(10, 16, 33)).astype(dt)
        host = CellTableGame(T, cells)
        dev = CellTableGame(torch.from_numpy(T).to(DEV), cells)
        for (e0, e1), g in itertools.product([(0, 200), (17, 95), (38, 40)], (True, 4)):
            want = ops.prefix_walk(host, 9, e0, e1, g, engine="reference")
            got = ops.prefix_walk(dev, 9, e0, e1, g)
            assert got.is_cuda
            np.testing.assert_array_equal(got.cpu().numpy(), want)  # --fmad=false: same bits


def test_shapcam_incremental_on_gpu_equals_cpu():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    for name, layer in (("resnet18", "layer4"), ("vgg11", "features.18")):
        model = getattr(tv.models, name)(weights=None).eval().double()
        x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
        cpu = shapcam.ShapCAM(model, layer, K=8).explain(x, targets=[2])
        gpu = shapcam.ShapCAM(model.to(DEV), layer, K=8).explain(x.to(DEV), targets=[2])
        assert cpu.path == gpu.path == "incremental"
        np.testing.assert_allclose(gpu.values.cpu().numpy(), cpu.values.numpy(), atol=1e-12)
        model.cpu()


def test_global_permutations_equal_shared_memory(monkeypatch):
    """The global-memory path (n beyond shared memory) gives the shared-memory path's bits: forced
    at small n for every op."""
    rng = np.random.default_rng(4)
    n = 37
    x = torch.randn(3, n, device=DEV)
    players = torch.arange(n)
    vals = torch.from_numpy(rng.normal(size=(5 * 2 * (n - 1), 2))).to(DEV)
    ve, vf = torch.zeros(2, dtype=torch.float64, device=DEV), torch.ones(2, dtype=torch.float64, device=DEV)

    def run():
        st = [torch.zeros((n, 2), dtype=torch.float64, device=DEV) for _ in range(4)]
        ops.accumulate(1, 0, 5, n, True, vals, ve, vf, 0, st[0], st[1], block=2, base=(st[2], st[3]))
        return [ops.permutations(5, 3, 11, n, True, device=DEV), ops.ranks(5, 3, 11, n, True, device=DEV),
                ops.masks(5, 40, 200, n, True, out=torch.empty((160, n), dtype=torch.bool, device=DEV)),
                ops.masked_apply(5, 40, 200, n, True, x, players)] + st

    smem = [t.cpu().numpy() for t in run()]
    monkeypatch.setattr(ops, "FORCE_GLOBAL_PERMUTATIONS", True)
    glob = [t.cpu().numpy() for t in run()]
    for a, b in zip(smem, glob):
        np.testing.assert_array_equal(a, b)
    game = shapcam.CellTableGame(torch.randn(n, 2, 3, dtype=torch.float64, device=DEV))
    np.testing.assert_array_equal(ops.prefix_walk(game, 2, 0, 90, True).cpu().numpy(),
                                  ops.prefix_walk(game, 2, 0, 90, True, engine="native").cpu().numpy())


def test_beyond_shared_memory_players():
    """n past the shared-memory limit: the ops take the global path and match the CPU engine."""
    from shapcam import _C

    n = int(_C.cuda_max_players(0)) + 1000
    got = ops.masks(7, 3 * (n - 1) - 50, 3 * (n - 1) + 50, n, True,
                    out=torch.empty((100, n), dtype=torch.bool, device=DEV))
    want = ops.masks(7, 3 * (n - 1) - 50, 3 * (n - 1) + 50, n, True, engine="native")
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    x = torch.randn(2, n, device=DEV)
    got = ops.masked_apply(7, 10, 40, n, True, x, torch.arange(n))
    want = ops.masked_apply(7, 10, 40, n, True, x.cpu().numpy(), np.arange(n), engine="native")
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    w = torch.linspace(-1, 1, n, dtype=torch.float64, device=DEV)
    dev_res = shapcam.estimate_shapley(lambda m: m.double() @ w, n, K=2, seed=1, device=DEV,
                                       batch_size=512)
    host_res = shapcam.estimate_shapley(lambda m: m.astype(np.float64) @ w.cpu().numpy(), n, K=2,
                                        seed=1, batch_size=512)
    np.testing.assert_allclose(dev_res.values.cpu().numpy(), host_res.values, atol=1e-9)
    # the raw binding without a workspace refuses, naming the fix
    out = torch.empty((2, n), dtype=torch.bool, device=DEV)
    with pytest.raises(ValueError, match="work"):
        _C.masks_cuda(0, 0, 0, 0, 2, n, True, out.data_ptr())
