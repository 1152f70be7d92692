"""Native C++ ops against the NumPy reference, bit for bit; chunking; input checks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_native
from shapcam import ops

pytestmark = requires_native


@pytest.mark.parametrize("n", [2, 5, 49, 196, 1001])
@pytest.mark.parametrize("antithetic", [True, False])
def test_permutations_and_masks_equal_reference(n, antithetic):
    for seed in (0, 1, 2**40 + 3, 2**64 - 1):
        a = ops.permutations(seed, 3, 40, n, antithetic, engine="reference")
        b = ops.permutations(seed, 3, 40, n, antithetic, engine="native")
        np.testing.assert_array_equal(a, b)
        e0, e1 = 5, 5 + 3 * (n - 1) + 2
        np.testing.assert_array_equal(ops.masks(seed, e0, e1, n, antithetic, engine="reference"),
                                      ops.masks(seed, e0, e1, n, antithetic, engine="native"))


def _case(rng, shape, pshape, n, dtype, baseline_kind):
    x = rng.normal(size=shape).astype(dtype)
    players = rng.integers(0, n, size=pshape)
    if baseline_kind == "scalar":
        baseline = float(rng.normal())
    elif baseline_kind == "full":
        baseline = rng.normal(size=shape).astype(dtype)
    else:  # broadcast over the leading axis
        baseline = rng.normal(size=shape[1:]).astype(dtype)
    return x, players, baseline


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("baseline_kind", ["scalar", "full", "broadcast"])
@pytest.mark.parametrize("shape,pshape", [
    ((512, 14, 14), (14, 14)),     # Shap-CAM layout, VGG16
    ((64, 7, 7), (7, 7)),          # Shap-CAM layout, ResNet (fewer channels to keep it quick)
    ((3, 8, 8), (3, 8, 8)),        # one player per element
    ((30,), (30,)),                # tabular
    ((4, 5, 6), (5, 1)),           # a map broadcast in the middle
    ((2, 1, 9), (9,)),             # a singleton axis
])
def test_masked_apply_equals_reference(rng, dtype, baseline_kind, shape, pshape):
    n = 40 if np.prod(pshape) > 40 else int(np.prod(pshape))
    n = max(n, 2)
    x, players, baseline = _case(rng, shape, pshape, n, dtype, baseline_kind)
    for e0, e1 in ((0, 1), (3, 3 + 2 * (n - 1) + 5), (7 * (n - 1) - 2, 7 * (n - 1) + 1)):
        ref = ops.masked_apply(4, e0, e1, n, True, x, players, baseline, engine="reference")
        nat = ops.masked_apply(4, e0, e1, n, True, x, players, baseline, engine="native")
        assert nat.shape == (e1 - e0,) + shape and nat.dtype == dtype
        np.testing.assert_array_equal(nat, ref)
        # The definition, written out: where(mask[players], x, baseline).
        m = ops.masks(4, e0, e1, n, True, engine="reference")
        want = np.where(m[:, np.broadcast_to(players, shape)], x, np.broadcast_to(baseline, shape))
        np.testing.assert_array_equal(nat, want.astype(dtype))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_masked_apply_random_shapes(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    pdim = data.draw(st.integers(1, ndim))
    pshape = tuple(s if data.draw(st.booleans()) else 1 for s in shape[ndim - pdim:])
    n = data.draw(st.integers(2, 12))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    x, players, baseline = _case(rng, shape, pshape, n, dtype,
                                 data.draw(st.sampled_from(["scalar", "full"])))
    anti = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**64 - 1))
    e0 = data.draw(st.integers(0, 50))
    e1 = e0 + data.draw(st.integers(1, 30))
    np.testing.assert_array_equal(
        ops.masked_apply(seed, e0, e1, n, anti, x, players, baseline, engine="native"),
        ops.masked_apply(seed, e0, e1, n, anti, x, players, baseline, engine="reference"))


def test_masked_apply_fills_caller_buffer_and_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(8, 5, 5)).astype(np.float32)
    players = np.arange(25).reshape(5, 5)
    out = torch.full((12, 8, 5, 5), float("nan"))
    res = ops.masked_apply(1, 10, 22, 25, True, torch.from_numpy(x), players, 0.0, out=out)
    assert res is out and not torch.isnan(out).any()
    np.testing.assert_array_equal(out.numpy(), ops.masked_apply(1, 10, 22, 25, True, x, players,
                                                                engine="reference"))


def test_non_contiguous_x_is_handled(rng):
    x = rng.normal(size=(6, 6, 4)).transpose(2, 0, 1)  # [4, 6, 6], not contiguous
    players = np.arange(36).reshape(6, 6)
    np.testing.assert_array_equal(
        ops.masked_apply(0, 0, 9, 36, True, x, players, engine="native"),
        ops.masked_apply(0, 0, 9, 36, True, np.ascontiguousarray(x), players, engine="reference"))


def test_accumulate_equals_reference_and_chunking(rng):
    n, m, S = 11, 3, 7
    for anti in (True, False):
        pps = 2 if anti else 1
        values = rng.normal(size=(S * pps * (n - 1), m))
        ve, vf = rng.normal(size=m), rng.normal(size=m)
        states = {}
        for eng in ("reference", "native"):
            mean, m2 = np.zeros((n, m)), np.zeros((n, m))
            ops.accumulate(5, 0, S, n, anti, values, ve, vf, 0, mean, m2, engine=eng)
            states[eng] = (mean, m2)
            # Two pushes (3 samples, then 4) give the same bits as one.
            mean2, m22 = np.zeros((n, m)), np.zeros((n, m))
            split = 3 * pps * (n - 1)
            ops.accumulate(5, 0, 3, n, anti, values[:split], ve, vf, 0, mean2, m22, engine=eng)
            ops.accumulate(5, 3 * pps, 4, n, anti, values[split:], ve, vf, 3, mean2, m22, engine=eng)
            np.testing.assert_array_equal(mean2, mean)
            np.testing.assert_array_equal(m22, m2)
        np.testing.assert_array_equal(states["native"][0], states["reference"][0])
        np.testing.assert_array_equal(states["native"][1], states["reference"][1])


def test_blocked_accumulate_is_the_merge_of_blocks_from_zero(rng):
    """block > 0: every engine folds finished blocks into the base with the arithmetic of
    estimator._merge, so the engine's fixed-shape sum equals blocks computed apart (from zero, by
    other workers) and merged in order on the host — bit for bit, however the pushes are split."""
    from shapcam.estimator import _merge, _Welford

    n, m, B, S = 9, 2, 4, 15  # 3 whole blocks and 3 samples of a fourth
    for anti in (True, False):
        pps = 2 if anti else 1
        per = pps * (n - 1)
        values = rng.normal(size=(S * per, m))
        ve, vf = rng.normal(size=m), rng.normal(size=m)
        # blocks from zero, merged in order
        total = _Welford(np.zeros((n, m)), np.zeros((n, m)), 0)
        for j in range(0, S, B):
            cnt = min(B, S - j)
            blk = _Welford(np.zeros((n, m)), np.zeros((n, m)), cnt)
            ops.accumulate(5, j * pps, cnt, n, anti, values[j * per:(j + cnt) * per], ve, vf, 0,
                           blk.mean, blk.m2, engine="reference")
            total = _merge(total, blk)
        for eng in ("reference", "native"):
            for splits in ([S], [1, 6, 8], [5, 5, 5], [4, 11]):
                mean, m2 = np.zeros((n, m)), np.zeros((n, m))
                bmean, bm2 = np.zeros((n, m)), np.zeros((n, m))
                done = 0
                for cnt in splits:
                    ops.accumulate(5, done * pps, cnt, n, anti, values[done * per:(done + cnt) * per],
                                   ve, vf, done, mean, m2, engine=eng, block=B, base=(bmean, bm2))
                    done += cnt
                got = _merge(_Welford(bmean, bm2, S - S % B), _Welford(mean, m2, S % B))
                np.testing.assert_array_equal(got.mean, total.mean)
                np.testing.assert_array_equal(got.m2, total.m2)
                # and it is a Welford state of the same samples
                flat = _Welford(np.zeros((n, m)), np.zeros((n, m)), S)
                ops.accumulate(5, 0, S, n, anti, values, ve, vf, 0, flat.mean, flat.m2, engine=eng)
                np.testing.assert_allclose(got.mean, flat.mean, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(got.m2, flat.m2, rtol=1e-10, atol=1e-12)


@requires_native
def test_permutation_work_words_is_the_headers():
    from shapcam import _C

    for n in (1, 2, 5, 8, 29_000, 100_000):
        draws = 4 * ((n - 1 + 3) // 4) if n > 1 else 0
        assert _C.permutation_work_words(n) == max(draws, n) + n
    with pytest.raises(ValueError):
        _C.permutation_work_words(0)


def test_blocked_accumulate_refuses_a_missing_or_aliased_base():
    z = lambda: np.zeros((4, 1))  # noqa: E731
    vals = np.zeros((2 * 3, 1))
    with pytest.raises(ValueError, match="base"):
        ops.accumulate(0, 0, 1, 4, True, vals, np.zeros(1), np.zeros(1), 0, z(), z(), block=2)
    mean, m2 = z(), z()
    _C = pytest.importorskip("shapcam._C")
    with pytest.raises(ValueError):
        _C.accumulate_cpu(0, 0, 1, 4, 1, True, vals, np.zeros(1), np.zeros(1), 0, mean, m2, 2, mean, z())
    with pytest.raises(ValueError, match="block"):
        ops.accumulate(0, 0, 1, 4, True, vals, np.zeros(1), np.zeros(1), 0, z(), z(), block=-1,
                       base=(z(), z()))


# --- bad input ---------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument(rng):
    x = rng.normal(size=(4, 3, 3)).astype(np.float32)
    players = np.arange(9).reshape(3, 3)
    with pytest.raises(ValueError, match=r"players: ids must lie in \[0, 5\)"):
        ops.masked_apply(0, 0, 4, 5, True, x, players)
    with pytest.raises(ValueError, match="players: ids"):
        ops.masked_apply(0, 0, 4, 9, True, x, players - 1)
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.masked_apply(0, 0, 4, 9, True, x, np.arange(4))
    with pytest.raises(TypeError, match="x: dtype"):
        ops.masked_apply(0, 0, 4, 9, True, x.astype(np.int32), players)
    with pytest.raises(TypeError, match="players: expected an integer"):
        ops.masked_apply(0, 0, 4, 9, True, x, players.astype(float))
    with pytest.raises(ValueError, match="baseline: shape"):
        ops.masked_apply(0, 0, 4, 9, True, x, players, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="out: expected"):
        ops.masked_apply(0, 0, 4, 9, True, x, players, out=np.empty((3, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="out: expected"):
        ops.masked_apply(0, 0, 4, 9, True, x, players, out=np.empty((4, 4, 3, 3), np.float64))
    with pytest.raises(ValueError, match="chunk"):
        ops.masks(0, 5, 2, 9)
    with pytest.raises(TypeError, match="seed"):
        ops.masks(1.5, 0, 2, 9)
    with pytest.raises(ValueError, match="out"):
        ops.masks(0, 0, 4, 9, out=np.empty((4, 9), np.int8))
    with pytest.raises(ValueError, match="k0"):
        ops.accumulate(0, 1, 1, 3, True, np.zeros((4, 1)), np.zeros(1), np.zeros(1), 0,
                       np.zeros((3, 1)), np.zeros((3, 1)))


def test_torch_x_with_numpy_baseline(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(4, 3, 3)).astype(np.float32)
    base = rng.normal(size=(3, 3)).astype(np.float32)
    players = np.arange(9).reshape(3, 3)
    got = ops.masked_apply(2, 0, 8, 9, True, torch.from_numpy(x), players, base)
    assert torch.is_tensor(got)
    np.testing.assert_array_equal(got.numpy(), ops.masked_apply(2, 0, 8, 9, True, x, players, base,
                                                                engine="reference"))
    with pytest.raises(ValueError, match="baseline: shape"):
        ops.masked_apply(2, 0, 8, 9, True, torch.from_numpy(x), players, np.zeros(4, np.float32))
