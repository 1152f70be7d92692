"""ROAD (Rong et al., ICML 2022): noisy linear imputation against a dense solve of its equations,
both solvers, the percentiles' masks and scores as pytorch-grad-cam defines them, and agreement
with pytorch-grad-cam's own ROAD where it is installed."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from shapcam import metrics  # noqa: E402
from shapcam.models import digits  # noqa: E402


def _smooth_maps(N, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand((N, 1, 5, 5), generator=g), size=(H, W), mode="bilinear",
                         align_corners=False)[:, 0]


def _dense_imputation(image, keep):
    """The oracle: every removed pixel the weighted mean of its in-image neighbours (1/6 edges,
    1/12 diagonals), written pixel by pixel as a dense system and solved by np.linalg.solve."""
    C, H, W = image.shape
    removed = [(r, c) for r in range(H) for c in range(W) if not keep[r, c]]
    index = {rc: i for i, rc in enumerate(removed)}
    A = np.zeros((len(removed), len(removed)))
    b = np.zeros((len(removed), C))
    for i, (r, c) in enumerate(removed):
        for dr, dc, w in metrics.ROAD_NEIGHBOURS:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < H and 0 <= cc < W):
                continue
            A[i, i] += w
            if keep[rr, cc]:
                b[i] += w * image[:, rr, cc]
            else:
                A[i, index[(rr, cc)]] -= w
    x = np.linalg.solve(A, b)
    out = image.copy()
    for i, (r, c) in enumerate(removed):
        out[:, r, c] = x[i]
    return out


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_imputation_equals_the_dense_solve(solver):
    g = torch.Generator().manual_seed(1)
    images = torch.rand((3, 2, 13, 11), generator=g, dtype=torch.float64)
    keep = torch.rand((3, 13, 11), generator=g) < torch.tensor([0.1, 0.5, 0.9])[:, None, None]
    keep[:, 0, 0] = True
    out = metrics.road_impute(images, keep, noise=0.0, solver=solver)
    for i in range(3):
        ref = _dense_imputation(images[i].numpy(), keep[i].numpy())
        # direct: an LU of the same equations (measured 4e-16); cg: stops at a relative residual
        # of 1e-7 (measured 3e-8)
        tol = 1e-12 if solver == "direct" else 1e-6
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=0, atol=tol)
        np.testing.assert_array_equal(out[i].numpy()[:, keep[i].numpy()],
                                      images[i].numpy()[:, keep[i].numpy()])


def test_imputation_on_worker_processes_is_the_same():
    g = torch.Generator().manual_seed(2)
    images = torch.rand((4, 3, 20, 20), generator=g, dtype=torch.float64)
    keep = torch.rand((4, 20, 20), generator=g) < 0.4
    one = metrics.road_impute(images, keep, noise=0.01, seed=1, solver="direct")
    two = metrics.road_impute(images, keep, noise=0.01, seed=1, solver="direct", workers=2)
    assert torch.equal(one, two)
    # runs of one image (ROAD's percentiles) go to a worker together
    reps, keeps = images.repeat_interleave(3, 0), torch.rand((12, 20, 20), generator=g) < 0.5
    one = metrics.road_impute(reps, keeps, noise=0.0, solver="direct")
    two = metrics.road_impute(reps, keeps, noise=0.0, solver="direct", workers=2)
    assert torch.equal(one, two)
    single = metrics.road_impute(reps[:3], keeps[:3], noise=0.0, solver="direct", workers=2)
    assert torch.equal(single, one[:3])
    with pytest.raises(ValueError, match="workers"):
        metrics.road_impute(images, keep, workers=0)


def test_imputation_noise_is_seeded_and_only_where_removed():
    images = torch.rand((2, 3, 16, 16), dtype=torch.float64)
    keep = torch.rand((2, 16, 16)) < 0.5
    a = metrics.road_impute(images, keep, noise=0.01, seed=3)
    b = metrics.road_impute(images, keep, noise=0.01, seed=3)
    c = metrics.road_impute(images, keep, noise=0.01, seed=4)
    clean = metrics.road_impute(images, keep, noise=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    diff = (a - clean).permute(0, 2, 3, 1)
    assert float(diff[keep].abs().max()) == 0.0
    assert 0.005 < float(diff[~keep].std()) < 0.02
    with pytest.raises(ValueError, match="keeps no pixel"):
        metrics.road_impute(images, torch.zeros((2, 16, 16), dtype=torch.bool))


def test_keep_masks_follow_the_percentiles():
    maps = _smooth_maps(2, 20, 20)
    morf = metrics.road_keep_masks(maps, (10, 50, 90), "morf")
    lerf = metrics.road_keep_masks(maps, (10, 50, 90), "lerf")
    for i in range(2):
        for j, p in enumerate((10, 50, 90)):
            assert abs(float(morf[i, j].float().mean()) - p / 100) < 0.01
            assert abs(float(lerf[i, j].float().mean()) - p / 100) < 0.01
            # MoRF keeps the least salient pixels, LeRF the most salient
            assert maps[i][morf[i, j]].max() <= maps[i][~morf[i, j]].min()
            assert maps[i][lerf[i, j]].min() >= maps[i][~lerf[i, j]].max()


def test_road_scores_and_combined():
    model = digits.load_model()
    x = digits.to_tensor(digits.load_heldout()["images"][:3])
    maps = _smooth_maps(3, 64, 64, seed=2)
    t = model(x).argmax(1)
    morf = metrics.road(model, x, maps, t, order="morf", noise=0.0)
    lerf = metrics.road(model, x, maps, t, order="lerf", noise=0.0)
    both = metrics.road_combined(model, x, maps, t, noise=0.0)
    assert morf.shape == (3,) and morf.dtype == torch.float64
    torch.testing.assert_close(both, (lerf - morf) / 2, rtol=0, atol=0)
    # by hand for one percentile: the score after imputation minus the score before
    keep = metrics.road_keep_masks(maps[:1], (30,), "morf")[0]
    imp = metrics.road_impute(x[:1], keep, noise=0.0)
    p = lambda z: torch.softmax(model(z).double(), 1)[0, t[0]]  # noqa: E731
    one = metrics.road(model, x[:1], maps[:1], t[:1], percentiles=(30,), noise=0.0)
    with torch.no_grad():
        assert float(one[0]) == pytest.approx(float(p(imp) - p(x[:1])), abs=1e-12)
    with pytest.raises(ValueError, match="order"):
        metrics.road(model, x, maps, t, order="both")
    with pytest.raises(ValueError, match="percentiles"):
        metrics.road(model, x, maps, t, percentiles=(0, 50))


def test_road_equals_pytorch_grad_cam_without_noise(monkeypatch):
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # their imputer's noise, set to 0 (a keyword of its own class the Average classes do not pass)
    monkeypatch.setattr(road_mod.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0, road_mod.neighbors_weights))
    model = digits.load_model()
    x = digits.to_tensor(digits.load_heldout()["images"][:2])
    maps = _smooth_maps(2, 64, 64, seed=5)
    t = [int(c) for c in model(x).argmax(1)]
    targets = [ClassifierOutputTarget(c) for c in t]
    for order, cls in (("morf", road_mod.ROADMostRelevantFirstAverage),
                       ("lerf", road_mod.ROADLeastRelevantFirstAverage)):
        theirs = cls()(x, maps.numpy(), targets, model)
        ours = metrics.road(model, x, maps, t, order=order, noise=0.0, score="logit")
        # theirs: float32 imputation and scores (measured differences 1e-7)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-5)


# --- the randomization test -------------------------------------------------------------------

SIX = {"shapcam": {"K": 8}, "gradcam": {}, "gradcam++": {}, "scorecam": {},
       "rise": {"n_masks": 64}, "mask": {"iterations": 5}}


@pytest.mark.parametrize("method", sorted(SIX))
def test_randomization_test_runs_every_method_without_touching_the_model(method):
    from shapcam.cam import make_cam

    model = digits.load_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = digits.to_tensor(digits.load_heldout()["images"][:2])
    t = model(x).argmax(1).tolist()
    out = metrics.randomization_test(
        lambda m: make_cam(method, m, digits.TARGET_LAYER, **SIX[method]), model, x, t)
    assert list(out) == metrics.parameter_layers(model) and list(out)[0] == "classifier.2"
    for rho in out.values():
        assert rho.shape == (2,)
        finite = rho[torch.isfinite(rho)]
        assert ((finite >= -1 - 1e-12) & (finite <= 1 + 1e-12)).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _ImageOnly:
    """A "method" that ignores the model: the map is the image's brightness."""

    def __init__(self, model):
        self.model = model

    def explain(self, images, targets=None):
        class R:
            maps = images.mean(1)
        return R()


def test_randomization_test_tells_a_map_that_ignores_the_model():
    from shapcam.cam import GradCAM

    model = digits.load_model()
    x = digits.to_tensor(digits.load_heldout()["images"][:3])
    t = model(x).argmax(1).tolist()
    blind = metrics.randomization_test(_ImageOnly, model, x, t)
    assert all(torch.equal(rho, torch.ones(3, dtype=torch.float64)) for rho in blind.values())
    grad = metrics.randomization_test(lambda m: GradCAM(m, digits.TARGET_LAYER), model, x, t)
    assert float(grad["classifier.2"].nan_to_num(1.0).median()) < 0.9  # the maps change
    # independent randomisation of the top layer is the cascade's first step; seeded
    ind = metrics.randomization_test(lambda m: GradCAM(m, digits.TARGET_LAYER), model, x, t,
                                     layers="independent", max_layers=2)
    assert list(ind) == ["classifier.2", "features.9"]
    torch.testing.assert_close(ind["classifier.2"], grad["classifier.2"], equal_nan=True)
    again = metrics.randomization_test(lambda m: GradCAM(m, digits.TARGET_LAYER), model, x, t)
    torch.testing.assert_close(again["features.6"], grad["features.6"], equal_nan=True)
    with pytest.raises(ValueError, match="layers"):
        metrics.randomization_test(_ImageOnly, model, x, t, layers="top")


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.rand((4, 50), generator=g)
    b = a + 0.3 * torch.rand((4, 50), generator=g)
    b[1, :10] = 0.5  # ties
    ours = metrics.spearman(a, b)
    for i in range(4):
        assert float(ours[i]) == pytest.approx(stats.spearmanr(a[i], b[i]).statistic, abs=1e-12)
    assert torch.isnan(metrics.spearman(a[:1], torch.zeros(1, 50)))[0]


def test_keep_masks_with_ties_keep_their_share():
    maps = torch.zeros((2, 10, 10))
    maps[0, :5] = torch.rand((5, 10))  # half the map ties at 0 (a ReLU'd map)
    for order in ("morf", "lerf"):
        keep = metrics.road_keep_masks(maps, (10, 30, 50, 70, 90), order, seed=1)
        for j, p in enumerate((10, 30, 50, 70, 90)):
            assert int(keep[1, j].sum()) == p  # the constant map: p% of its 100 pixels
            assert int(keep[0, j].sum()) >= 1
            if order == "morf" and p <= 50:  # half the map ties at its minimum: p% of it kept
                assert int(keep[0, j].sum()) == p and not maps[0][keep[0, j]].any()
        assert torch.equal(keep, metrics.road_keep_masks(maps, (10, 30, 50, 70, 90), order, seed=1))
    model = digits.load_model()
    x = digits.to_tensor(digits.load_heldout()["images"][:2])
    flat = torch.zeros((2, 64, 64))
    out = metrics.road(model, x, flat, [1, 2], noise=0.0)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_imputation_equals_the_host_lu():
    g = torch.Generator().manual_seed(3)
    images = torch.rand((6, 3, 40, 40), generator=g)
    keep = torch.rand((6, 40, 40), generator=g) < torch.linspace(0.1, 0.9, 6)[:, None, None]
    keep[:, 0, 0] = True
    host = metrics.road_impute(images, keep, noise=0.0, solver="direct")
    dev = metrics.road_impute(images.cuda(), keep.cuda(), noise=0.0)  # auto: cg on the GPU
    assert dev.is_cuda
    # cg to a relative residual of 1e-7, then float32 (measured on the CPU: 6e-7)
    torch.testing.assert_close(dev.cpu(), host, rtol=0, atol=2e-6)
