"""The incremental path: CellTableGame and its prefix walk (reference = C++ to the bit), and
Shap-CAM's incremental evaluation (= the fused path on the same seed; exact where additive;
falls back, or refuses naming the op, where the head does not qualify)."""
import numpy as np
import pytest

import shapcam
from shapcam import _engine, ops
from shapcam.games import CellTableGame

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shapcam.cam import ShapCAM  # noqa: E402


def random_cell_game(seed, n_cells=5, size=3, d=4, readout=None, pad=True):
    rng = np.random.default_rng(seed)
    n = n_cells * size - (1 if pad else 0)
    slots = np.arange(n_cells * size)
    cells = np.full(n_cells * size, -1)
    keep = slots if not pad else np.delete(slots, rng.integers(0, len(slots)))
    cells[keep] = rng.permutation(n)
    tables = rng.normal(size=(n_cells, 1 << size, d))
    return CellTableGame(tables, cells.reshape(n_cells, size), readout=readout), tables, cells.reshape(n_cells, size)


def z_by_definition(game, masks):
    """z(S) = z_empty + sum_c (T[c, S ∩ c] - T[c, {}]) written out, coalition by coalition."""
    out = []
    for m in masks:
        z = np.array(game.z_empty, dtype=np.float64)
        for c in range(game.n_cells):
            s = sum(1 << b for b in range(game.cell_size)
                    if game.members[c, b] >= 0 and m[game.members[c, b]])
            z = z + (game.tables[c, s] - game.tables[c, 0])
        out.append(z)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_walk_equals_definition_and_engines_agree(seed):
    game, _, _ = random_cell_game(seed)
    n = game.n_players
    for e0, e1 in [(0, 60), (7, 33), (13, 14), (26, 90)]:
        ref = ops.prefix_walk(game, 5 + seed, e0, e1, True, engine="reference")
        if _engine.native() is not None:
            nat = ops.prefix_walk(game, 5 + seed, e0, e1, True, engine="native")
            np.testing.assert_array_equal(ref, nat)  # same expression, same order: same bits
        want = z_by_definition(game, ops.masks(5 + seed, e0, e1, n, True))
        # measured <= 3e-15: the walk adds n-1 differences where the definition adds n_cells
        np.testing.assert_allclose(ref, want, rtol=0, atol=1e-12)


def test_walk_float32_and_torch_tables(engine):
    game, tables, cells = random_cell_game(3, d=6)
    t32 = CellTableGame(torch.from_numpy(tables.astype(np.float32)), cells)
    a = ops.prefix_walk(t32, 2, 3, 40, False, engine=engine)
    b = ops.prefix_walk(CellTableGame(tables.astype(np.float32), cells), 2, 3, 40, False, engine=engine)
    assert a.dtype == torch.float32
    np.testing.assert_array_equal(a.numpy(), b)
    np.testing.assert_allclose(b, ops.prefix_walk(game, 2, 3, 40, False, engine=engine), atol=1e-5)


def test_estimate_on_a_cell_game(engine):
    game, _, _ = random_cell_game(4, readout=lambda Z: np.tanh(Z[:, :2]))
    direct = lambda m: np.tanh(z_by_definition(game, m)[:, :2])
    a = shapcam.estimate_shapley(game, K=32, seed=3, engine=engine)
    b = shapcam.estimate_shapley(direct, game.n_players, K=32, seed=3, engine=engine)
    np.testing.assert_allclose(a.values, b.values, atol=1e-12)
    np.testing.assert_allclose(a.stderr, b.stderr, atol=1e-12)
    c = shapcam.estimate_shapley(game, K=32, seed=3, engine=engine, batch_size=17)
    np.testing.assert_array_equal(a.values, c.values)  # chunking never changes a bit
    assert np.abs(a.efficiency_gap).max() < 1e-12


def test_exact_for_additive_cell_games():
    game, _, _ = random_cell_game(5)
    ex = game.exact_shapley()
    want = shapcam.exact_shapley(lambda m: z_by_definition(game, m), game.n_players)
    np.testing.assert_allclose(ex.values, want.values, atol=1e-12)
    assert np.all(ex.stderr == 0)
    np.testing.assert_allclose(ex.values.sum(0), ex.v_full - ex.v_empty, atol=1e-12)
    with pytest.raises(ValueError, match="readout=None"):
        CellTableGame(game.tables, game.members, readout=lambda z: z).exact_shapley()


def test_glm_game():
    rng = np.random.default_rng(0)
    w, x, bg = rng.normal(size=10), rng.normal(size=10), rng.normal(size=10)
    lin = CellTableGame.glm(w, x, bg, intercept=0.5)
    np.testing.assert_allclose(lin.exact_shapley().values[:, 0], w * (x - bg), atol=1e-12)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    logit = CellTableGame.glm(w, x, bg, intercept=0.5, link=sigmoid)
    res = shapcam.estimate_shapley(logit, K=512, seed=0)
    exact = shapcam.exact_shapley(lambda m: sigmoid(0.5 + np.where(m, x, bg) @ w), 10)
    assert np.all(np.abs(res.values - exact.values) < 5 * res.stderr + 1e-12)
    assert abs(res.v_full - sigmoid(0.5 + x @ w)) < 1e-12


def test_cell_game_bad_input():
    t = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="appears 2 times"):
        CellTableGame(t, np.array([[0], [1], [1]]))
    with pytest.raises(ValueError, match="2\\^1"):
        CellTableGame(np.zeros((3, 4, 4)), None)
    with pytest.raises(ValueError, match="at most 8"):
        CellTableGame(np.zeros((1, 512, 2)), np.arange(9)[None])
    with pytest.raises(TypeError, match="dtype"):
        CellTableGame(np.zeros((3, 2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="z_empty"):
        CellTableGame(t, z_empty=np.zeros(3))
    if _engine.native() is None:
        return
    from shapcam import _C

    out = np.empty((4, 4))
    args = (0, 0, 4, 3, True, t, 3, 1, 4)
    with pytest.raises(ValueError, match="cell_of"):
        _C.prefix_walk_cpu(*args, np.arange(3, dtype=np.int32).reshape(3, 1),
                           np.array([0, 2, 1], np.int32), np.zeros(4), out)
    with pytest.raises(ValueError, match="outside"):
        _C.prefix_walk_cpu(*args, np.array([[0], [1], [7]], np.int32), np.arange(3, dtype=np.int32),
                           np.zeros(4), out)
    with pytest.raises(ValueError, match="overlaps"):
        _C.prefix_walk_cpu(*args, np.arange(3, dtype=np.int32).reshape(3, 1),
                           np.arange(3, dtype=np.int32), out[0], out)


# --- Shap-CAM ------------------------------------------------------------------------------------

tv = pytest.importorskip("torchvision")

# (architecture, target layer, input size, kwargs): torchvision heads with random weights.
ARCHS = [("resnet18", "layer4", 64, {}), ("resnext50_32x4d", "layer4", 64, {}),
         ("wide_resnet50_2", "layer4", 64, {}), ("regnet_y_400mf", "trunk_output", 64, {}),
         ("densenet121", "features", 64, {}), ("mobilenet_v2", "features", 64, {}),
         ("mobilenet_v3_small", "features", 64, {}), ("efficientnet_b0", "features", 64, {}),
         ("convnext_tiny", "features", 96, {}), ("googlenet", "inception5b", 64,
                                                  {"aux_logits": False, "init_weights": True}),
         ("inception_v3", "Mixed_7c", 96, {"aux_logits": False, "init_weights": True}),
         ("squeezenet1_1", "features.12", 96, {}), ("vgg11", "features.18", 64, {})]


def _model(name, kwargs):
    torch.manual_seed(0)
    return getattr(tv.models, name)(weights=None, **kwargs).eval().double()


@pytest.mark.parametrize("name, layer, size, kwargs", ARCHS, ids=[a[0] for a in ARCHS])
def test_incremental_equals_fused(name, layer, size, kwargs):
    model = _model(name, kwargs)
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for score, baseline in (("probability", 0.0), ("logit", 0.25)):
        inc = ShapCAM(model, layer, K=4, score=score, baseline=baseline).explain(x, targets=[[3, 7]])
        fused = ShapCAM(model, layer, K=4, score=score, baseline=baseline,
                        incremental=False).explain(x, targets=[[3, 7]])
        assert inc.path == "incremental" and fused.path == "fused"
        # same seed, same permutations: the estimates differ by float rounding of the sums only
        # (measured <= 3e-16 probability, <= 2e-16 logit in float64)
        np.testing.assert_allclose(inc.values.numpy(), fused.values.numpy(), rtol=0, atol=1e-10)
        if not (score == "logit" and inc.stderr.abs().max() == 0):  # exact case: stderr 0
            np.testing.assert_allclose(inc.stderr.numpy(), fused.stderr.numpy(), rtol=0, atol=1e-10)
        assert inc.efficiency_gap.abs().max() < 1e-10


class SmallGapNet(nn.Module):
    def __init__(self, pool="avg"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(5))
        self.pool = pool
        self.fc = nn.Linear(5 if pool == "avg" else 5 * 4, 4)
        self.double()

    def forward(self, x):
        a = self.features(x)
        if self.pool == "avg":
            return self.fc(torch.relu(a).mean((2, 3)))
        return self.fc(torch.flatten(nn.functional.max_pool2d(torch.relu(a), 2), 1))


def test_equals_exact_enumeration_on_a_3x3_map():
    torch.manual_seed(0)
    net = SmallGapNet().eval()
    with torch.no_grad():
        net.features[2].running_mean.uniform_(-0.5, 0.5)
    x = torch.rand(1, 3, 3, 3, dtype=torch.float64)
    A = net.features(x)[0]

    def game(score):
        def v(m):
            keep = torch.from_numpy(m).reshape(-1, 1, 3, 3)
            out = net.fc(torch.relu(torch.where(keep, A, torch.zeros(()))).mean((2, 3)))
            out = torch.softmax(out, 1) if score == "probability" else out
            return out[:, 2].detach().numpy()
        return v

    exact_logit = shapcam.exact_shapley(game("logit"), 9).values.reshape(3, 3)
    res = ShapCAM(net, "features", K=2, score="logit").explain(x, targets=[2])
    assert res.path == "incremental" and res.stderr.abs().max() == 0  # exact, whatever K
    np.testing.assert_allclose(res.values[0].numpy(), exact_logit, atol=1e-12)
    exact_p = shapcam.exact_shapley(game("probability"), 9).values.reshape(3, 3)
    res = ShapCAM(net, "features", K=2000).explain(x, targets=[2])
    assert np.all(np.abs(res.values[0].numpy() - exact_p) < 5 * res.stderr[0].numpy() + 1e-12)


def test_additive_case_is_the_cam_closed_form():
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=6).eval().double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    res = ShapCAM(model, "layer4", K=1, score="logit").explain(x, targets=[1, 4])
    with torch.no_grad():
        A = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
    for i, c in enumerate([1, 4]):
        cam = (model.fc.weight[c][:, None, None] * A[i]).sum(0) / (A.shape[-1] * A.shape[-2])
        np.testing.assert_allclose(res.values[i].numpy(), cam.detach().numpy(), rtol=0, atol=1e-12)
    assert res.stderr.abs().max() == 0 and res.path == "incremental"


def test_maxpool_cells_and_per_channel_baseline():
    torch.manual_seed(0)
    net = SmallGapNet(pool="max").eval()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    base = torch.linspace(-0.2, 0.3, 5, dtype=torch.float64)[:, None, None]
    inc = ShapCAM(net, "features", K=6, baseline=base).explain(x, targets=[0, 3])
    fused = ShapCAM(net, "features", K=6, baseline=base, incremental=False).explain(x, targets=[0, 3])
    assert inc.path == "incremental"
    np.testing.assert_allclose(inc.values.numpy(), fused.values.numpy(), atol=1e-12)


def test_float32_models():
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 64, 64)
    inc = ShapCAM(model, "layer4", K=8).explain(x)
    fused = ShapCAM(model, "layer4", K=8, incremental=False).explain(x)
    assert inc.path == "incremental"
    # float32 features: the fused head and the tables round differently (measured 4e-9 on
    # probabilities ~1e-3); the efficiency axiom holds to float64 rounding of the estimator
    np.testing.assert_allclose(inc.values.numpy(), fused.values.numpy(), atol=1e-7)


class SpatialConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)  # a spatial conv after the layer mixes positions
        self.fc = nn.Linear(4, 3)
        self.double()

    def forward(self, x):
        return self.fc(self.mix(self.features(x)).mean((2, 3)))


@pytest.mark.parametrize("make, layer, blocker", [
    (lambda: tv.models.alexnet(weights=None).eval().double(), "features.10", "features.12 \\(MaxPool2d\\)"),
    (lambda: SpatialConvHead().eval(), "features", "mix \\(Conv2d\\)"),
    (lambda: tv.models.resnet18(weights=None).eval().double(), "layer3", "layer4"),
])
def test_heads_that_do_not_qualify_fall_back(make, layer, blocker):
    torch.manual_seed(0)
    model = make()
    size = 64 if layer != "features.10" else 96
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    auto = ShapCAM(model, layer, K=2).explain(x)
    assert auto.path == "fused"
    with pytest.raises(ValueError, match=blocker):
        ShapCAM(model, layer, K=2, incremental=True).explain(x)


def test_hooks_split_falls_back():
    torch.manual_seed(0)
    net = SmallGapNet().eval()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert ShapCAM(net, "features", K=2, split="hooks").explain(x).path == "fused"
    with pytest.raises(ValueError, match="hooks"):
        ShapCAM(net, "features", K=2, split="hooks", incremental=True).explain(x)
    with pytest.raises(ValueError, match="incremental"):
        ShapCAM(net, "features", incremental="yes")


def assert_matches_central_differences(loss_at, p, g, h=1e-6):
    """g (an autograd gradient of loss_at() with respect to parameter p) equals central differences
    at two entries of p."""
    for idx in [(0, 0), (1, 2)] if p.dim() == 2 else [(0, 0, 0, 0), (3, 1, 2, 1)]:
        old = p.data[idx].item()
        p.data[idx] = old + h
        up = loss_at()
        p.data[idx] = old - h
        down = loss_at()
        p.data[idx] = old
        assert abs((up - down) / (2 * h) - g[idx].item()) < 1e-5 * max(1.0, abs(g[idx].item())), idx


def test_maps_are_differentiable_and_match_finite_differences():
    """explain(create_graph=True): the Shapley map is a torch expression of the parameters (the
    same permutations and walk as the engines); its gradient matches central differences."""
    torch.manual_seed(0)
    net = SmallGapNet().eval()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    cam = ShapCAM(net, "features", K=6)
    res = cam.explain(x, targets=[1], create_graph=True)
    plain = cam.explain(x, targets=[1])
    assert res.path == "incremental" and res.values.requires_grad
    np.testing.assert_allclose(res.values.detach().numpy(), plain.values.numpy(), atol=1e-12)
    np.testing.assert_allclose(res.stderr.numpy(), plain.stderr.numpy(), atol=1e-12)
    # (the maps are normalised in float32, too coarse for central differences: the loss is on the
    # raw float64 values; the maps carry a graph all the same)
    assert res.maps.requires_grad
    wts = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(4, 4)
    loss = (res.values ** 2).sum() + (res.values * wts).sum()
    params = [net.fc.weight, net.features[0].weight]
    grads = torch.autograd.grad(loss, params)

    def loss_at():
        with torch.no_grad():
            r = cam.explain(x, targets=[1], create_graph=True)
        return float((r.values ** 2).sum() + (r.values * wts).sum())

    for p, g in zip(params, grads):
        assert_matches_central_differences(loss_at, p, g)
    with pytest.raises(ValueError, match="create_graph"):
        from shapcam.cam import RISE

        RISE(net, n_masks=4).explain(x, create_graph=True)
    with pytest.raises(ValueError, match="incremental path"):
        ShapCAM(net, "features", K=2, split="hooks").explain(x, create_graph=True)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "scorecam"])
def test_baseline_maps_are_differentiable(name):
    """explain(create_graph=True) for the Grad-CAM family (double backprop: the gradient of the
    map matches central differences) and Score-CAM (differentiable through A, its channel weights
    held constant): same values as without, and a graph to the parameters."""
    from shapcam.cam import make_cam

    torch.manual_seed(0)
    net = SmallGapNet().eval()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    cam = make_cam(name, net, "features")
    res = cam.explain(x, targets=[1], create_graph=True)
    plain = cam.explain(x, targets=[1])
    assert res.values.requires_grad and res.maps.requires_grad
    np.testing.assert_allclose(res.values.detach().numpy(), plain.values.numpy(), atol=1e-12)
    if name == "scorecam":
        return
    wts = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(4, 4)
    p = net.features[0].weight
    g = torch.autograd.grad((res.values * wts).sum(), p)[0]

    def loss_at():
        with torch.no_grad():
            return float((cam.explain(x, targets=[1]).values * wts).sum())

    assert_matches_central_differences(loss_at, p, g)


class ONetHead(nn.Module):
    """MTCNN's ONet tail: conv features, permute(0, 3, 2, 1), flatten, Linear, PReLU, Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.PReLU(6))
        self.dense5 = nn.Linear(6 * 3 * 4, 8)
        self.prelu5 = nn.PReLU(8)
        self.dense6 = nn.Linear(8, 2)
        self.double()

    def forward(self, x):
        x = self.conv(x).permute(0, 3, 2, 1).contiguous()
        return self.dense6(self.prelu5(self.dense5(x.view(x.shape[0], -1))))


def test_onet_flatten_linear_head():
    torch.manual_seed(0)
    net = ONetHead().eval()
    x = torch.rand(2, 3, 3, 4, dtype=torch.float64)
    inc = ShapCAM(net, "conv", K=6).explain(x, targets=[0, 1])
    fused = ShapCAM(net, "conv", K=6, incremental=False).explain(x, targets=[0, 1])
    assert inc.path == "incremental"
    np.testing.assert_allclose(inc.values.numpy(), fused.values.numpy(), atol=1e-12)
