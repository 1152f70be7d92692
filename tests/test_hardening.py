"""Hostile input: every case here once crashed the interpreter, ran code, or gave a silently wrong
answer. Each must now end in a result or a Python exception. Cases that could kill the process
run in a subprocess, so a regression fails this test instead of taking pytest down."""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

import shapcam
from shapcam import _engine, ops

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shapcam.cam import GradCAM, ScoreCAM, ShapCAM  # noqa: E402

native = pytest.mark.skipif(_engine.native() is None, reason="needs shapcam._C")
CWD = tempfile.gettempdir()  # not the source tree: the installed package is under test


EXPECT = '''
def expect(exc, fn, *a, **k):
    try:
        fn(*a, **k)
    except exc as e:
        print("OK", type(e).__name__, str(e).splitlines()[0][:200])
    else:
        print("NO ERROR")
'''


def run_isolated(code, mem_limit_bytes=None, timeout=120):
    """Run code in a fresh interpreter; returns its stdout. A crash (signal) fails the test."""
    prelude = ""
    if mem_limit_bytes:
        prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({mem_limit_bytes}, "
                   f"{mem_limit_bytes}))\n")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", prelude + EXPECT + textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=CWD, timeout=timeout, env=env)
    assert out.returncode == 0, f"rc={out.returncode} (negative = killed by a signal)\n{out.stderr[-3000:]}"
    return out.stdout




# --- crashes --------------------------------------------------------------------------------

@native
def test_empty_input_is_refused_not_sigfpe():
    out = run_isolated("""
        import numpy as np, shapcam
        from shapcam import ops, _C
        g = lambda b: b.reshape(len(b), -1).sum(1)
        expect(ValueError, shapcam.MaskedInputGame, g, np.zeros((4, 0), np.float32),
               players=np.arange(4).reshape(4, 1))
        expect(ValueError, ops.masked_apply, 0, 0, 2, 4, True, np.zeros((4, 0), np.float32),
               np.arange(4).reshape(4, 1))
        out = np.empty((2, 0), np.float32)
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 2, 4, True, np.zeros((4, 0), np.float32), 4, 0,
               np.zeros(0, np.int32), 0.0, out)
    """)
    assert out.count("OK ValueError") == 3, out


@native
def test_size_products_that_wrap_are_refused():
    out = run_isolated("""
        import numpy as np
        from shapcam import ops, _C
        mean, m2 = np.zeros((4, 1)), np.zeros((4, 1))
        expect(ValueError, ops.accumulate, 0, 0, 2**62 + 1, 4, False, np.zeros((0, 1)), np.zeros(1),
               np.zeros(1), 0, mean, m2)
        expect(ValueError, _C.accumulate_cpu, 0, 0, 2**62 + 1, 4, 0, False, np.zeros((0, 0)),
               np.zeros(0), np.zeros(0), 0, np.zeros((4, 0)), np.zeros((4, 0)))
        expect(ValueError, _C.permutations_cpu, 0, 0, 2**62, 4, True, np.empty((1, 4), np.int32), None)
        expect(ValueError, _C.masks_cpu, 0, 0, 2**62, 2**20, True, np.empty(4, bool))
        _C.permutations_cpu(0, 0, 2**40, 4, True, None, None)   # no outputs: returns at once
        print("returned")
    """)
    assert out.count("OK ValueError") == 4 and "returned" in out, out


@native
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer reserves terabytes of address space: no RLIMIT_AS")
def test_huge_n_and_memory_limits_give_python_errors():
    out = run_isolated("""
        import numpy as np
        from shapcam import ops
        expect(ValueError, ops.permutations, 0, 0, 0, 2**40)
        expect(ValueError, ops.masks, 0, 0, 1, 2**31)
        # 2^28 players under a 1.5 GB address-space limit: a MemoryError, not std::terminate
        expect(MemoryError, ops.masks, 0, 0, 1, 2**28)
        expect(MemoryError, ops.permutations, 0, 0, 1, 2**28)
    """, mem_limit_bytes=1536 * 2**20)
    assert out.count("OK ValueError") == 2 and out.count("OK MemoryError") == 2, out


@native
def test_raw_bindings_check_ids_and_aliasing():
    out = run_isolated("""
        import numpy as np
        from shapcam import _C
        x = np.ones((2, 9), np.float32)
        out = np.empty((3, 2, 9), np.float32)
        bad = np.arange(9, dtype=np.int32); bad[4] = 10**9
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 3, 9, True, x, 2, 9, bad, 0.0, out)
        bad[4] = 9   # == n: one past the last player
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 3, 9, True, x, 2, 9, bad, 0.0, out)
        bad[4] = -1
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 3, 9, True, x, 2, 9, bad, 0.0, out)
        ids = np.arange(9, dtype=np.int32)
        buf = np.zeros((1, 2, 9), np.float32)
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 1, 9, True, buf[0], 2, 9, ids, 0.0, buf)  # out is x
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 1, 9, True, x, 2, 9, ids, buf[0], buf)   # out is baseline
        pr = np.empty((2, 5), np.int32)
        expect(ValueError, _C.permutations_cpu, 0, 0, 2, 5, True, pr, pr)
        st = np.zeros((5, 1))
        expect(ValueError, _C.accumulate_cpu, 0, 0, 1, 5, 1, True, np.zeros((8, 1)), np.zeros(1),
               np.zeros(1), 0, st, st)
        vals = np.zeros((8, 1))
        expect(ValueError, _C.accumulate_cpu, 0, 0, 1, 5, 1, True, vals, np.zeros(1), np.zeros(1), 0,
               vals[:5], np.zeros((5, 1)))
        expect(ValueError, _C.masked_apply_cpu, 0, 0, 3, 9, True, x, 2, 9, ids, None, out)
    """)
    assert out.count("OK ValueError") == 9, out


@native
def test_regression_bindings_refuse_bad_input():
    """The regression sampler's ops (csrc/cpu/regression_cpu.cpp) with wrong sizes, dtypes,
    sizes outside the plan, unsorted thresholds, aliased outputs and huge n: Python errors."""
    out = run_isolated("""
        import numpy as np
        from shapcam import _C
        n = 10
        thr = np.array([2**30, 2**31, 3 * 2**30], np.uint64)
        mid = np.array([2, 3, 7, 8], np.int64)
        masks = np.empty((4, n), bool)
        _C.regression_pairs_cpu(0, 0, 2, n, thr, mid, masks, None, None)   # fine
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 3, n, thr, mid, masks, None, None)     # too small
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 2, n, thr, mid[:3], masks, None, None)  # sizes
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 2, n, thr, np.array([2, 3, 7, 10], np.int64),
               masks, None, None)                                                                # size n
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 2, n, thr[::-1].copy(), mid, masks, None, None)
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 2, n, thr.astype(np.int64), mid, masks, None, None)
        expect(ValueError, _C.regression_pairs_cpu, 0, 2, 1, n, thr, mid, masks, None, None)     # j1 < j0
        buf = np.zeros(64, np.uint8)
        expect(ValueError, _C.regression_pairs_cpu, 0, 0, 2, n, thr, mid, buf[:40].view(bool).reshape(4, n),
               buf[36:40].reshape(2, 2), None)                                                    # aliased
        expect((ValueError, MemoryError), _C.regression_pairs_cpu, 0, 0, 1, 2**31 - 1, np.zeros(0, np.uint64),
               np.array([1], np.int64), None, None, None)                                         # huge n
        F, mw = 8, 1
        pk = np.zeros((3, 2), np.uint8)            # empty coalitions: size 0 is never sampled
        q = np.full(n + 1, 0.1)
        U, V = np.empty((F, n, mw)), np.empty((F, n, mw))
        args = (pk, 3, n, F, mw, np.zeros((3, mw)), np.zeros((F, n, mw)), np.zeros((F, n + 1, mw)), q)
        expect(ValueError, _C.regression_moments_cpu, *args, U, V)
        pk[:, 0] = 0xff
        pk[:, 1] = 0x3f                              # bits past player 9 are ignored: size 8
        _C.regression_moments_cpu(*((pk,) + args[1:]), U, V)
        q[8] = 0.0
        expect(ValueError, _C.regression_moments_cpu, *((pk,) + args[1:-1] + (q,)), U, V)  # q(s) = 0
        expect(ValueError, _C.regression_moments_cpu, *args[:-1], np.full(n, 0.1), U, V)
        q[8] = 0.1
        expect(ValueError, _C.regression_moments_cpu, *((pk,) + args[1:]), U, U)                 # U is V
        k, p = 2, n + 1
        G, h = np.zeros((F, p, p)), np.zeros((F, p, mw))
        gargs = (pk, 3, n, F, k, mw, np.zeros((n + 1, k)), np.ones(n + 1), np.zeros((3, mw)))
        _C.regression_gram_cpu(*gargs, G, h)
        _C.regression_gram_cpu(*gargs, None, h)
        expect(ValueError, _C.regression_gram_cpu, *gargs, G[:, :-1], h)
        expect(ValueError, _C.regression_gram_cpu, *gargs[:-2], h.reshape(-1)[:n + 1], gargs[-1], None, h)
        expect(ValueError, _C.regression_gram_cpu, *gargs[:3], F, -1, mw, *gargs[6:], G, h)
        T = n // 2 + 1
        N = np.zeros((F, T, n - 1, n - 1), np.int64)
        S1, SL = np.zeros((F, T, n - 1), np.int64), np.zeros((F, T, n - 1), np.int64)
        C, CL = np.zeros((F, T), np.int64), np.zeros((F, T), np.int64)
        _C.regression_counts_cpu(pk, 3, n, F, N, S1, SL, C, CL)
        expect(ValueError, _C.regression_counts_cpu, pk, 3, n, F, N, S1, S1, C, CL)              # aliased
        expect(ValueError, _C.regression_counts_cpu, pk, 3, n, F, N.astype(np.int32), S1, SL, C, CL)
        expect(ValueError, _C.regression_counts_cpu, pk, 4, n, F, N, S1, SL, C, CL)              # 4 rows?
        expect(ValueError, _C.regression_counts_cpu, np.zeros((3, 9), np.uint8), 3, 65, F,      # n > 64
               np.zeros((F, 33, 64, 64), np.int64), np.zeros((F, 33, 64), np.int64),
               np.zeros((F, 33, 64), np.int64), np.zeros((F, 33), np.int64), np.zeros((F, 33), np.int64))
        A = np.tile(np.eye(4), (F, 1, 1))
        U, okf, hh, xx = np.zeros_like(A), np.zeros(F, np.uint8), np.ones((F, 4, 2)), np.zeros((F, 4, 2))
        _C.regression_cholesky_cpu(A, F, 4, 1e-10, U, okf)
        _C.regression_cholsolve_cpu(U, F, 4, 2, hh, xx)
        expect(ValueError, _C.regression_cholesky_cpu, A, F, 5, 1e-10, U, okf)                  # p
        expect(ValueError, _C.regression_cholesky_cpu, A, F, 4, float("nan"), U, okf)           # ridge
        expect(ValueError, _C.regression_cholesky_cpu, A, F, 4, 1e-10, A, okf)                  # U is A
        expect(ValueError, _C.regression_cholesky_cpu, A, F, 4, 1e-10, U, okf.astype(bool))
        expect(ValueError, _C.regression_cholsolve_cpu, U, F, 4, 3, hh, xx)                     # mw
        expect(ValueError, _C.regression_cholsolve_cpu, U, F, 4, 2, hh, hh)                     # x is h
        expect(ValueError, _C.regression_cholsolve_cpu, U, F, 4, 2, hh, xx[:, ::2])             # strided
        expect((ValueError, OverflowError, MemoryError), _C.regression_cholesky_cpu, A, 2**62, 2**31, 0.0, U, okf)
        qq = np.full(n + 1, 0.1)
        targs = (pk, 3, n, F, 0, mw, 8, np.zeros((6, mw)), np.zeros((F, n - 1, mw)), np.zeros(mw),
                 np.zeros((n, mw)), 4, np.zeros((n + 1, 0)), qq)
        mean, m2 = np.zeros((n, mw)), np.zeros((n, mw))
        _C.regression_tail_cpu(*targs, mean, m2)
        expect(ValueError, _C.regression_tail_cpu, *targs[:7], np.zeros((5, mw)), *targs[8:], mean, m2)  # P
        expect(ValueError, _C.regression_tail_cpu, *targs[:6], 0, *targs[7:], mean, m2)               # PB = 0
        expect(ValueError, _C.regression_tail_cpu, *targs, mean, mean)                                # aliased
        _C.regression_tail_cpu(*targs, mean, m2, np.zeros((n, mw)))
        expect(ValueError, _C.regression_tail_cpu, *targs, mean, m2, m2)                              # m4 is m2
        expect(ValueError, _C.regression_tail_cpu, *targs[:-1], np.zeros(n + 1), mean, m2)            # q(s) = 0
        expect((ValueError, OverflowError, MemoryError), _C.regression_tail_cpu, pk, 2**62, n, F, 0, mw, 8,
               *targs[7:], mean, m2)
        # the fused op (pk, M, W, n, F, k, mw, PB, P, D, sizefeat, wt, hE, hW, U, Tb, L, X2, q)
        Uf = np.tile(np.eye(n - 1), (F, 1, 1))
        fargs = [pk, 3, 0, n, F, 0, mw, 8, np.zeros((6, mw)), np.zeros(mw), np.zeros((n + 1, 0)),
                 np.ones(n + 1), np.zeros((n - 1, mw)), None, Uf, np.zeros((n, mw)), 4,
                 np.zeros((n + 1, 0)), qq]
        def fa(**kw):
            a = list(fargs)
            for i, v in kw.items():
                a[int(i[1:])] = v
            return a
        _C.regression_finish_cpu(*fargs, mean, m2)
        _C.regression_finish_cpu(*fa(a13=np.zeros((F, n - 1, mw))), mean, m2)
        expect(ValueError, _C.regression_finish_cpu, *fa(a2=4), mean, m2)                        # W > M
        expect(ValueError, _C.regression_finish_cpu, *fa(a13=np.zeros((F, n, mw))), mean, m2)   # hW size
        expect(ValueError, _C.regression_finish_cpu, *fa(a14=Uf[:, :, ::2]), mean, m2)           # strided U
        expect(ValueError, _C.regression_finish_cpu, *fa(a12=mean[:n - 1]), mean, m2)            # mean is hE
        expect(ValueError, _C.regression_finish_cpu, *fargs, mean, m2, np.zeros((n + 1, mw)))    # m4 size
        expect(ValueError, _C.regression_finish_cpu, *fa(a18=np.zeros(n + 1)), mean, m2)        # q(s) = 0
        expect(ValueError, _C.regression_finish_cpu, *fa(a11=np.ones(n + 1, np.float32)), mean, m2)
        expect((ValueError, OverflowError, MemoryError), _C.regression_finish_cpu, *fa(a1=2**62), mean, m2)
        # the enumerated rows' share (Y, R, n, p, mw, W, AW, last, v0, D, Tb, hE)
        eargs = [np.zeros((4, mw)), 4, n, 3, mw, np.zeros((4, n)), np.zeros((4, 3)), np.zeros(4),
                 np.zeros(mw), np.zeros(mw)]
        Te, hEe = np.zeros((n, mw)), np.zeros((3, mw))
        _C.regression_enum_cpu(*eargs, Te, hEe)
        _C.regression_enum_cpu(*eargs, Te, None)
        expect(ValueError, _C.regression_enum_cpu, *eargs[:5], np.zeros((4, n - 1)), *eargs[6:], Te, hEe)  # W
        expect(ValueError, _C.regression_enum_cpu, *eargs, Te, Te[:3])                                    # aliased
        expect(ValueError, _C.regression_enum_cpu, *eargs, Te, np.zeros((3, mw))[::-1])                   # strided
        expect(ValueError, _C.regression_enum_cpu, *eargs[:2], 0, *eargs[3:], Te, hEe)                    # n = 0
        expect((ValueError, OverflowError, MemoryError), _C.regression_enum_cpu, eargs[0], 2**62, n, 3, mw,
               *eargs[5:], Te, hEe)
    """)
    assert out.count("NO ERROR") == 0 and out.count("OK ") == 46, out
    assert out.count("overlaps") == 10, out  # the aliased calls fail on aliasing, not earlier


@pytest.mark.parametrize("engine", ["reference"] + (["native"] if _engine.native() else []))
def test_out_aliasing_x_is_refused_on_every_engine(engine):
    x = np.arange(18, dtype=np.float64).reshape(2, 9)
    buf = np.zeros((1, 2, 9))
    buf[0] = x
    with pytest.raises(ValueError, match="overlaps x"):
        ops.masked_apply(0, 0, 1, 9, True, buf[0], np.arange(9), out=buf, engine=engine)


def test_crafted_model_file_does_not_run_code(tmp_path):
    """A .pt whose pickle calls os.system: loading must refuse it, and the command never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": Evil()}, tmp_path / "evil.pt")
    from shapcam.loading import load_model

    with pytest.raises(ValueError, match="trust_pickle"):
        load_model(str(tmp_path / "evil.pt"), arch="resnet18")
    assert not marker.exists()
    from shapcam import cli

    assert cli.main(["explain", str(tmp_path / "evil.pt"), "--model", str(tmp_path / "evil.pt"),
                     "--out", str(tmp_path / "o")]) == 2
    assert not marker.exists()


# --- silent wrong results ----------------------------------------------------------------------

class BatchSizeNet(nn.Module):
    """Computes the batch size before the layer and uses it after (EfficientNet-PyTorch does)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 36, 3)
        self.double()

    def forward(self, x):
        bs = x.size(0)
        a = torch.relu(self.layer(torch.relu(self.stem(x))))
        return self.fc(a.view(bs, -1))


class WidthNet(BatchSizeNet):
    """Reads a non-batch size before the layer and uses it after: not recomputable in the head."""

    def forward(self, x):
        w = x.size(3)
        a = torch.relu(self.layer(torch.relu(self.stem(x))))
        return self.fc(a.reshape(-1, 5 * w * w))


def test_non_tensor_values_before_the_layer():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    # a batch size read before the layer is read off the activation in the fx head
    net = BatchSizeNet().eval()
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")
        cam = ShapCAM(net, "layer", K=4)
        auto = cam.explain(x, targets=[0, 2])
    assert cam.split.method == "fx" and auto.path == "incremental"
    hooks = ShapCAM(net, "layer", K=4, split="hooks").explain(x, targets=[0, 2])
    np.testing.assert_allclose(auto.values.numpy(), hooks.values.numpy(), atol=1e-12)
    assert auto.efficiency_gap.abs().max() < 1e-12
    # any other non-tensor value: the hooks split (correct), with a warning; split="fx" refuses
    torch.manual_seed(0)
    wnet = WidthNet().eval()
    with pytest.warns(RuntimeWarning, match="non-tensor"):
        wauto = ShapCAM(wnet, "layer", K=4).explain(x, targets=[0, 2])
    whooks = ShapCAM(wnet, "layer", K=4, split="hooks").explain(x, targets=[0, 2])
    np.testing.assert_array_equal(wauto.values.numpy(), whooks.values.numpy())
    with pytest.raises(ValueError, match="non-tensor"):
        ShapCAM(wnet, "layer", K=4, split="fx").explain(x)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 4)
        self.double()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_threads_explaining_one_model_agree_with_serial():
    torch.manual_seed(0)
    net = BNNet().train()
    with torch.no_grad():
        net(torch.rand(8, 3, 8, 8, dtype=torch.float64))  # non-trivial running stats
    stats = net.features[1].running_mean.clone()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    want = ShapCAM(net, "features", K=8).explain(x).values
    results, errors = [None] * 6, []

    def work(i):
        try:
            results[i] = ShapCAM(net, "features", K=8).explain(x).values
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        np.testing.assert_array_equal(r.numpy(), want.numpy())
    assert torch.equal(net.features[1].running_mean, stats) and net.training


def test_one_game_shared_by_threads(engine):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5))
    w = rng.normal(size=50)
    f = lambda b: np.tanh(b.reshape(len(b), -1) @ w)
    game = shapcam.MaskedInputGame(f, x, players=np.arange(25).reshape(5, 5))
    want = shapcam.estimate_shapley(shapcam.MaskedInputGame(f, x, players=np.arange(25).reshape(5, 5)),
                                    K=16, batch_size=7, engine=engine).values
    results = [None] * 4

    def work(i):
        results[i] = shapcam.estimate_shapley(game, K=16, batch_size=7, engine=engine).values

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_value_fn_returning_a_reused_buffer():
    w = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    buf = np.zeros(4096)

    def reusing(m):
        out = buf[:len(m)]
        out[:] = m @ w
        return out

    res = shapcam.estimate_shapley(reusing, 5, K=8)
    assert res.v_empty == 0.0 and res.v_full == 31.0
    np.testing.assert_allclose(res.values, w, atol=1e-12)
    assert abs(res.efficiency_gap) < 1e-12
    # the fused game: f returns a view of the workspace it was given
    x = np.arange(1.0, 6.0)
    g = shapcam.MaskedInputGame(lambda b: b[:, 0] * 0 + b.sum(1), x)
    np.testing.assert_allclose(shapcam.estimate_shapley(g, K=8, batch_size=3).values, x, atol=1e-12)


class InplaceVGGHead(nn.Module):
    """VGG's pattern: the target is a conv whose ReLU(inplace=True) follows, then max-pool + fc."""

    def __init__(self, inplace=True):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace),
                                      nn.MaxPool2d(2))
        self.classifier = nn.Linear(8 * 16, 5)
        self.double()

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AddInplaceNet(nn.Module):
    """A residual add done in place after the target layer (ResNet's `out += identity`)."""

    def __init__(self, inplace=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.inplace = inplace
        self.double()

    def forward(self, x):
        s = torch.relu(self.stem(x))
        out = self.layer(s)
        if self.inplace:
            out += s
        else:
            out = out + s
        return self.fc(torch.relu(out).mean((2, 3)))


@pytest.mark.parametrize("cls", [GradCAM, ScoreCAM, ShapCAM])
def test_inplace_ops_after_the_layer(cls):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for make, layer, splits in ((InplaceVGGHead, "features.2", ("auto",)),
                                (AddInplaceNet, "layer", ("auto", "hooks"))):
        torch.manual_seed(0)
        a = make(inplace=True).eval()
        torch.manual_seed(0)
        b = make(inplace=False).eval()
        for split in splits:
            kw = {"K": 4} if cls is ShapCAM else {}
            got = cls(a, layer, split=split, **kw).explain(x, targets=[1, 2])
            want = cls(b, layer, split=split, **kw).explain(x, targets=[1, 2])
            np.testing.assert_allclose(got.maps.numpy(), want.maps.numpy(), atol=1e-10)
            np.testing.assert_allclose(got.values.numpy(), want.values.numpy(), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype):
    torch.manual_seed(0)
    net32 = BNNet().float().eval()
    net = BNNet().to(dtype).eval()
    net.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in net32.state_dict().items()})
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for cls in (ShapCAM, ScoreCAM, GradCAM):
        kw = {"K": 8} if cls is ShapCAM else {}
        try:
            res = cls(net, "features", **kw).explain(x.to(dtype), targets=[1, 3])
        except RuntimeError as exc:  # an op this CPU build lacks in half precision
            if "not implemented" in str(exc):
                pytest.skip(f"{cls.__name__}: {exc}")
            raise
        assert torch.isfinite(res.maps).all() and torch.isfinite(res.values.float()).all(), cls
        ref = cls(net32, "features", **kw).explain(x, targets=[1, 3])
        # The raw maps agree with float32's to the format's precision, relative to their scale.
        # Measured: Shap-CAM 0.012 (fp16) and 0.124 (bf16: 8-bit mantissas, and Shapley values are
        # differences of close probabilities); Score-CAM, Grad-CAM <= 0.008. Bounds: 2-4x those.
        err = float((res.values.double() - ref.values.double()).abs().max() / ref.values.double().abs().max())
        bound = (0.05 if dtype == torch.float16 else 0.3) if cls is ShapCAM else 0.03
        assert err < bound, (cls, err)
    sc = ShapCAM(net, "features", K=8).explain(x.to(dtype), targets=[1, 3])
    assert sc.efficiency_gap.abs().max() < 1e-6  # the estimator's arithmetic stays float64


def test_smaller_silent_cases():
    with pytest.raises(TypeError, match="baseline"):
        shapcam.MaskedInputGame(lambda b: b.sum(1), np.ones(3), baseline=None)
    with pytest.raises(TypeError, match="complex"):
        shapcam.estimate_shapley(lambda m: m.sum(1) + 1j, 3, K=2)
    with pytest.raises(ValueError, match="seed"):
        shapcam.estimate_shapley(lambda m: m.sum(1), 3, K=2, seed=2**64)
    with pytest.raises(ValueError, match="seed"):
        shapcam.estimate_shapley(lambda m: m.sum(1), 3, K=2, seed=-1)
    g = lambda m: np.tanh(3 * (m @ np.arange(4.0)))
    a = shapcam.estimate_shapley(g, 4, K=4, seed=2**64 - 1, antithetic=False)
    b = shapcam.estimate_shapley(g, 4, K=4, seed=0, antithetic=False)
    assert not np.array_equal(a.values, b.values)
    from shapcam import metrics

    img = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    net = BNNet().eval()
    with pytest.raises(ValueError, match="steps"):
        metrics.deletion_insertion(net, img, torch.rand(1, 8, 8, dtype=torch.float64), [0], steps=0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.energy_pointing_game(torch.full((1, 4, 4), float("nan")), [[(0, 0, 2, 2)]])
    res = ShapCAM(net, "features", K=np.int64(4)).explain(img, targets=np.int64(3))
    assert int(res.targets[0]) == 3


@pytest.mark.parametrize("targets, exc, match", [
    ([[], []], ValueError, "at least one class"),
    ([3.7, 1], TypeError, "integers"),
    (True, TypeError, "integers"),
    ([True, 1], TypeError, "integers"),
    (torch.tensor([1.0, 2.0]), TypeError, "integer"),
    ("3", TypeError, "targets"),
])
def test_bad_targets(targets, exc, match):
    net = BNNet().eval()
    with pytest.raises(exc, match=match):
        GradCAM(net, "features").explain(torch.rand(2, 3, 8, 8, dtype=torch.float64), targets=targets)


# --- the command line and the evaluation runner ---------------------------------------------------

def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "shapcam.cli", *args], capture_output=True, text=True,
                         cwd=CWD, timeout=300)
    return out.returncode, out.stdout, out.stderr


def _png(path, a):
    from PIL import Image

    Image.fromarray(a).save(path)
    return str(path)


def test_cli_user_errors_are_one_line(tmp_path):
    from shapcam.models import digits

    img = _png(tmp_path / "d.png", digits.load_heldout()["images"][0])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    cases = [(["--target", "99"], "class ids must lie in"),
             (["--layer", "bogus"], "no module named 'bogus'"),
             (["--K", "0"], "positive integer"),
             (["--batch-size", "0"], "positive integer"),
             (["--out", str(tmp_path / "afile")], "not a folder"),
             (["--model", str(tmp_path / "junk.pt")], "cannot be loaded|not loadable"),
             (["--method", "magic"], "unknown")]
    for extra, msg in cases:
        rc, _, err = _cli("explain", img, "--out", str(tmp_path / "o"), *extra)
        assert rc == 2, (extra, err)
        assert "Traceback" not in err and err.strip().count("\n") <= 2, (extra, err)
        assert __import__("re").search(msg, err), (extra, err)


def test_cli_huge_and_corrupt_images(tmp_path):
    from PIL import Image

    Image.new("1", (20000, 10000)).save(tmp_path / "huge.png")  # 2e8 pixels, header says so
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    for name, msg in (("huge.png", "over the limit"), ("corrupt.png", "cannot read image")):
        rc, _, err = _cli("explain", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert rc == 2 and msg in err and "Traceback" not in err, err


def test_explain_same_file_names_do_not_overwrite(tmp_path):
    from shapcam.models import digits

    data = digits.load_heldout()["images"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    p1, p2 = _png(tmp_path / "a" / "x.png", data[0]), _png(tmp_path / "b" / "x.png", data[1])
    rc, out, err = _cli("explain", p1, p2, "--method", "gradcam", "--out", str(tmp_path / "o"))
    assert rc == 0, err
    pngs = sorted(os.listdir(tmp_path / "o"))
    assert pngs == ["grid.png", "results.json", "x-2_gradcam.png", "x_gradcam.png"], pngs
    assert "wrote 3 PNGs" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert [r["output_stem"] for r in res] == ["x", "x-2"]


def test_evaluate_refuses_to_mix_runs(tmp_path, capsys):
    from shapcam import cli

    out = tmp_path / "ev"
    base = ["evaluate", "--methods", "gradcam", "--limit", "2", "--out", str(out)]
    assert cli.main(base) == 0
    assert cli.main(base + ["--keep", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "keep: 0.5 -> 0.3" in err
    assert cli.main(base + ["--keep", "0.3", "--no-resume"]) == 0
    header = (out / "table.md").read_text().splitlines()[0]
    assert "keep=0.3" in header
    recs = [json.loads(l) for l in (out / "per_image.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and len({r["run"] for r in recs}) == 1
    # a leftover rank file of another run and junk lines are ignored on resume
    (out / "per_image.rank1.jsonl").write_text(
        json.dumps({"id": "digits-0000", "method": "gradcam", "run": "other", "average_drop": 1e9}) +
        "\n[1, 2]\n\"just a string\"\n{\"id\": 3}\n")
    assert cli.main(base + ["--keep", "0.3"]) == 0
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 3 and "1000000000" not in "".join(rows)


def test_evaluate_skips_unreadable_images(tmp_path, capsys):
    from shapcam import cli
    from shapcam.models import digits

    d = tmp_path / "imgs"
    d.mkdir()
    data = digits.load_heldout()["images"]
    _png(d / "a.png", data[0])
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    _png(d / "c.png", data[1])
    args = ["evaluate", "--data", str(d), "--methods", "gradcam", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 0
    header = (tmp_path / "o" / "table.md").read_text().splitlines()[0]
    assert "2 images" in header and "'unreadable image': 1" in header
    assert cli.main(args) == 0  # resume: the bad file does not break it either
    assert len((tmp_path / "o" / "per_image.csv").read_text().splitlines()) == 3
