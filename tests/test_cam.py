"""Shap-CAM and the baselines: identities that can fail, an established implementation as the
oracle, hooks released, bad input."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shapcam.cam import GradCAM, GradCAMPlusPlus, ScoreCAM, ShapCAM, split_model  # noqa: E402


class GapNet(nn.Module):
    """conv trunk -> [C, h, w] -> global average pool -> linear: the CAM architecture."""

    def __init__(self, C=6, classes=4, dtype=torch.float64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, C, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(C, classes)
        self.to(dtype)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class SkipNet(nn.Module):
    """A head that also needs a value from before the target layer (a skip connection over it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.aux = nn.Conv2d(4, 4, 1)  # output unused: does not feed the logits
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        a = torch.relu(self.block(s))
        self.aux(s)
        return self.fc((a * 2 + s).mean((2, 3)))


@pytest.fixture
def gapnet():
    torch.manual_seed(0)
    return GapNet().eval()


def images(n=2, size=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_linear_head_identity(gapnet, K):
    """GAP + linear head, value = logit: Shapley values are exact for any K and equal the CAM map
    (sum_k w_ck A_k) divided by h*w."""
    x = images()
    res = ShapCAM(gapnet, "features", K=K, score="logit").explain(x, targets=[1, 3])
    A = gapnet.features(x)
    for i, c in enumerate([1, 3]):
        cam = (gapnet.fc.weight[c][:, None, None] * A[i]).sum(0) / (A.shape[-1] * A.shape[-2])
        np.testing.assert_allclose(res.values[i].numpy(), cam.detach().numpy(), rtol=0, atol=1e-12)
        if K > 2:  # one antithetic pair (K <= 2) has no standard error: NaN, honestly
            np.testing.assert_allclose(res.stderr[i].numpy(), 0, atol=1e-12)


def test_efficiency_for_every_image_and_target(gapnet):
    x = images(3)
    res = ShapCAM(gapnet, "features", K=6).explain(x, targets=[[0, 1], [2, 3], [1, 1]])
    assert res.maps.shape == (3, 2, 12, 12) and res.values.shape == (3, 2, 6, 6)
    with torch.no_grad():
        p_full = torch.softmax(gapnet(x), 1)
        p_empty = torch.softmax(gapnet.fc(torch.zeros(1, 6, dtype=torch.float64)), 1)[0]
    for i, ts in enumerate([[0, 1], [2, 3], [1, 1]]):
        for j, c in enumerate(ts):
            total = res.values[i, j].sum().item()
            assert total == pytest.approx((p_full[i, c] - p_empty[c]).item(), abs=1e-12)
    assert res.efficiency_gap.abs().max() < 1e-12
    np.testing.assert_allclose(res.values[2, 0], res.values[2, 1])  # same class twice


def test_maps_are_normalised_and_sized(gapnet):
    x = images(2, size=16)
    for cls in (ShapCAM, GradCAM, GradCAMPlusPlus, ScoreCAM):
        maps = cls(gapnet, "features")(x)
        assert maps.shape == (2, 16, 16)
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_image_result_does_not_depend_on_batch(gapnet):
    x = images(3)
    cam = ShapCAM(gapnet, "features", K=4)
    both = cam.explain(x, targets=[0, 1, 2])
    one = cam.explain(x[1:2], targets=[1])
    np.testing.assert_array_equal(both.values[1].numpy(), one.values[0].numpy())


@pytest.mark.parametrize("split", ["fx", "hooks"])
def test_split_with_skip_connection_equals_full_forward(split):
    torch.manual_seed(1)
    net = SkipNet().double().eval()
    x = images(2, size=8)
    s = split_model(net, "block", split)
    with torch.no_grad():
        A, extras = s.trunk(x)
        np.testing.assert_allclose(s.head(A, extras).numpy(), net(x).numpy(), atol=1e-12)
    res = ShapCAM(net, "block", K=4, score="logit", split=split).explain(x, targets=[0, 2])
    assert res.efficiency_gap.abs().max() < 1e-12


def test_shapcam_float32_and_torchvision_resnet():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=7).eval()
    x = torch.rand(1, 3, 64, 64)
    res = ShapCAM(model, "layer4", K=4).explain(x)
    assert res.values.shape == (1, 2, 2) and res.maps.shape == (1, 64, 64)
    assert abs(float(res.efficiency_gap[0])) < 1e-6


# --- the baselines against pytorch-grad-cam ---------------------------------------------------

def _reference(cls_name, model, layer, x, targets):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref_cls = {"GradCAM": pgc.GradCAM, "GradCAMPlusPlus": pgc.GradCAMPlusPlus, "ScoreCAM": pgc.ScoreCAM}[cls_name]
    with ref_cls(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, ScoreCAM])
def test_baselines_match_pytorch_grad_cam(cls):
    """Same model, same images, same normalisation (ReLU, bilinear upsampling, min-max): the maps
    agree up to the two resize implementations (cv2.resize vs torch interpolate) and
    pytorch-grad-cam's double min-max with its epsilons: measured max |diff| 1.2e-4 (Grad-CAM, at
    the border row), under 1e-5 elsewhere; tolerance 3e-4. A wrong weighting differs by > 1e-2."""
    torch.manual_seed(3)
    model = GapNet(C=8, classes=5, dtype=torch.float32).eval()
    x = torch.rand(2, 3, 16, 16)
    targets = [1, 4]
    ours = cls(model, "features").explain(x, targets=targets).maps.numpy()
    ref = _reference(cls.__name__, model, model.features, x, targets)
    np.testing.assert_allclose(ours, ref, atol=3e-4)


def test_gradcam_definition_by_hand(gapnet):
    """Grad-CAM on a GAP + linear net: dlogit_c/dA_k = w_ck / (h w), so the weights are known."""
    x = images(1)
    res = GradCAM(gapnet, "features").explain(x, targets=[2])
    A = gapnet.features(x)[0]
    w = gapnet.fc.weight[2] / (A.shape[1] * A.shape[2])
    want = torch.relu((w[:, None, None] * A).sum(0))
    np.testing.assert_allclose(res.values[0].numpy(), (w[:, None, None] * A).sum(0).detach().numpy(), atol=1e-12)
    assert torch.relu(res.values[0]).allclose(want.detach())


def test_hooks_are_released_also_after_an_exception(gapnet):
    x = images(1)
    layer = gapnet.features
    cam = ShapCAM(gapnet, "features", K=2, split="hooks")
    cam.explain(x)
    assert not layer._forward_hooks

    def boom(feats):
        raise RuntimeError("boom")

    bad = ShapCAM(gapnet, "features", K=2, split="hooks")
    bad.split  # build it
    real_head = bad.split.head
    bad.split.head = lambda a, e, **kw: boom(a) if a.shape[0] > 2 else real_head(a, e, **kw)
    with pytest.raises(RuntimeError, match="boom"):
        bad.explain(x)
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert not gapnet.training  # eval mode restored to what it was


def test_training_mode_is_restored():
    torch.manual_seed(0)
    net = GapNet().train()
    ShapCAM(net, "features", K=2).explain(images(1))
    assert net.training and net.features[0].training


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input(gapnet):
    x = images(2)
    with pytest.raises(ValueError, match="candidates: .*features"):
        ShapCAM(gapnet, "featurs")
    with pytest.raises(ValueError, match=r"targets: class ids must lie in \[0, 4\)"):
        ShapCAM(gapnet, "features", K=2).explain(x, targets=[0, 4])
    with pytest.raises(ValueError, match="takes 3 channels, got 1"):
        ShapCAM(gapnet, "features", K=2).explain(x[:, :1])
    with pytest.raises(ValueError, match="empty batch"):
        ShapCAM(gapnet, "features", K=2).explain(x[:0])
    with pytest.raises(ValueError, match="one entry per image"):
        GradCAM(gapnet, "features").explain(x, targets=[1])
    with pytest.raises(ValueError, match="NaN"):
        GradCAM(gapnet, "features").explain(x * float("nan"))
    with pytest.raises(ValueError, match="K"):
        ShapCAM(gapnet, "features", K=0)
    torch.manual_seed(1)
    net = SkipNet().double().eval()
    with pytest.raises(ValueError, match="does not feed the model's output"):
        ShapCAM(net, "aux", K=2).explain(images(1, size=8))
