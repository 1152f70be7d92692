"""The public API's shape and plumbing: result fields squeezed alike, one registry of methods,
model and image loading in the library, the fx -> hooks fallback, the engine router, workspace
reuse, deprecated spellings that still work."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import shapcam  # noqa: E402
from shapcam import _engine, ops  # noqa: E402
from shapcam.cam import (METHODS, GradCAM, ScoreCAM, ShapCAM, make_cam, parse_methods,  # noqa: E402
                         split_model)
from shapcam.loading import DIGITS_INPUT, load_model, read_image  # noqa: E402


class GapNet(nn.Module):
    def __init__(self, C=6, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, C, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(C, classes)
        self.double()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class BranchyNet(GapNet):
    """Data-dependent control flow before the layer: torch.fx cannot trace it (TraceError)."""

    def forward(self, x):
        if x.sum() > 0:  # always true for images in [0, 1]
            x = x * 1.0
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return GapNet().eval()


def images(n=2, size=12, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_single_image_squeezes_every_field_alike(net):
    x = images(1)[0]  # [C, H, W]
    res = ShapCAM(net, "features", K=4).explain(x, targets=2)
    batch = ShapCAM(net, "features", K=4).explain(x[None], targets=[2])
    assert res.maps.shape == (12, 12) and res.values.shape == (6, 6) and res.stderr.shape == (6, 6)
    assert res.targets.shape == () and res.scores.shape == () and res.efficiency_gap.shape == ()
    assert int(res.targets) == 2
    for name in ("maps", "values", "stderr", "targets", "scores", "efficiency_gap"):
        got, want = getattr(res, name), getattr(batch, name)
        assert want.shape == (1,) + tuple(got.shape), name
        np.testing.assert_array_equal(got.numpy(), want[0].numpy())
    multi = ShapCAM(net, "features", K=4).explain(x, targets=[[1, 2]])
    assert multi.maps.shape == (2, 12, 12) and multi.stderr.shape == (2, 6, 6)
    assert multi.targets.tolist() == [1, 2] and multi.efficiency_gap.shape == (2,)


def test_fx_failure_falls_back_to_hooks():
    torch.manual_seed(0)
    model = BranchyNet().eval()
    with pytest.raises(Exception, match="(?i)trace|symbolic|iterat|control flow"):
        split_model(model, "features", "fx")
    with pytest.warns(RuntimeWarning, match="falling back to hooks"):
        s = split_model(model, "features", "auto")
    assert s.method == "hooks"
    x = images(2)
    with pytest.warns(RuntimeWarning):
        auto = ShapCAM(model, "features", K=4, score="logit").explain(x, targets=[0, 3])
    hooks = ShapCAM(model, "features", K=4, score="logit", split="hooks").explain(x, targets=[0, 3])
    np.testing.assert_array_equal(auto.values.numpy(), hooks.values.numpy())
    # a GAP + linear head with the logit: the Shapley map is the CAM map / (h w), whatever split
    A = model.features(x).detach()
    for i, c in enumerate([0, 3]):
        cam = (model.fc.weight[c][:, None, None] * A[i]).sum(0) / 36
        np.testing.assert_allclose(auto.values[i].numpy(), cam.detach().numpy(), atol=1e-12)


def test_split_errors_are_not_swallowed_by_the_fallback(net):
    class Twice(GapNet):
        def forward(self, x):
            return self.fc(self.features[4](self.features[4](self.features(x))).mean((2, 3)))

    with pytest.raises(ValueError, match="called 3 times"):
        split_model(Twice().eval(), "features.4", "auto")


def test_load_model_from_files(tmp_path, net):
    pytest.importorskip("torchvision")
    x = torch.rand(1, 3, 32, 32)
    # TorchScript
    ts = torch.jit.trace(GapNet().float().eval(), x)
    ts.save(str(tmp_path / "m.pt"))
    model, spec = load_model(str(tmp_path / "m.pt"))
    assert spec.channels == 3
    np.testing.assert_allclose(model(x).detach().numpy(), ts(x).detach().numpy())
    # a state dict + its architecture (torchvision), plain and inside a checkpoint
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "sd.pt")
    torch.save({"epoch": 3, "state_dict": ref.state_dict()}, tmp_path / "ckpt.pt")
    for f in ("sd.pt", "ckpt.pt"):
        model, _ = load_model(str(tmp_path / f), arch="resnet18")
        with torch.no_grad():
            np.testing.assert_array_equal(model(x).numpy(), ref(x).numpy())
    with pytest.raises(ValueError, match="needs its architecture"):
        load_model(str(tmp_path / "sd.pt"))
    with pytest.raises(ValueError, match="does not fit architecture"):
        load_model(str(tmp_path / "sd.pt"), arch="resnet34")
    # the bundled model's state dict through --arch digits
    from shapcam.models import digits

    torch.save(digits.load_model().state_dict(), tmp_path / "digits_sd.pt")
    model, spec = load_model(str(tmp_path / "digits_sd.pt"), arch="digits")
    assert spec == DIGITS_INPUT
    with pytest.raises(ValueError, match="not 'digits', an existing file"):
        load_model("no-such-model-or-file")


def test_pickled_module_needs_trust(tmp_path, net):
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="trust_pickle"):
        load_model(str(tmp_path / "whole.pt"))
    model, _ = load_model(str(tmp_path / "whole.pt"), trust_pickle=True)
    x = images(1)
    np.testing.assert_array_equal(model(x).detach().numpy(), net(x).detach().numpy())


def test_read_image_gray_and_16_bit(tmp_path):
    from PIL import Image

    a8 = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    x, raw = read_image(tmp_path / "g8.png", DIGITS_INPUT)
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    np.testing.assert_allclose(raw[0].numpy(), a8 / 255.0, atol=1e-6)
    a16 = (np.arange(64 * 64) * 16).reshape(64, 64).astype(np.uint16)  # spans 0 .. 65520
    Image.fromarray(a16).save(tmp_path / "g16.png")
    _, raw16 = read_image(tmp_path / "g16.png", DIGITS_INPUT)
    np.testing.assert_allclose(raw16[0].numpy(), a16 / 65535.0, atol=1e-6)  # not saturated
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="bad.png: cannot read image"):
        read_image(tmp_path / "bad.png", DIGITS_INPUT)


def test_method_registry_and_options(net):
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("GradCAM, shapcam,gradcam") == ["gradcam", "shapcam"]
    with pytest.raises(ValueError, match="unknown \\['magic'\\]"):
        parse_methods("shapcam,magic")
    opts = {"K": 6, "seed": 3, "batch_size": 7, "score": "logit"}
    sc = make_cam("shapcam", net, "features", **opts)
    assert (sc.K, sc.seed, sc.batch_size, sc.score) == (6, 3, 7, "logit")
    g = make_cam("gradcam", net, "features", **opts)  # K and seed are not Grad-CAM's: ignored
    assert isinstance(g, GradCAM) and g.score == "logit"
    s = make_cam("scorecam", net, "features", **dict(opts, batch_size=None))
    assert s.batch_size == 64  # None = the method's default
    with pytest.raises(ValueError, match="unknown 'nope'"):
        make_cam("nope", net, "features")


def test_scorecam_does_not_depend_on_batch_size(net):
    x = images(2)
    maps = [ScoreCAM(net, "features", batch_size=b).explain(x, targets=[1, 2]).values for b in (1, 4, 64)]
    np.testing.assert_allclose(maps[0].numpy(), maps[1].numpy(), atol=1e-12)
    np.testing.assert_allclose(maps[0].numpy(), maps[2].numpy(), atol=1e-12)


def test_masked_input_game_reuses_the_host_workspace(engine):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 4, 4)) for _ in range(3)]
    players = np.arange(16).reshape(4, 4)
    f = lambda b: b.reshape(len(b), -1) @ np.linspace(-1, 1, 48)
    workspace, first = None, None
    for x in xs:
        game = shapcam.MaskedInputGame(f, x, players=players, workspace=workspace)
        res = shapcam.estimate_shapley(game, K=6, batch_size=20, engine=engine)
        fresh = shapcam.estimate_shapley(shapcam.MaskedInputGame(f, x, players=players), K=6,
                                         batch_size=20, engine=engine)
        np.testing.assert_array_equal(res.values, fresh.values)
        np.testing.assert_array_equal(res.stderr, fresh.stderr)
        workspace = game.workspace
        first = workspace if first is None else first
        assert workspace is first  # one buffer for every image
    assert workspace.shape == (20, 3, 4, 4)
    with pytest.raises(ValueError, match="workspace"):
        shapcam.MaskedInputGame(f, xs[0], players=players, workspace=np.empty((4, 3, 4, 5)))


def test_router_never_copies_device_data_silently(monkeypatch):
    if _engine.native() is None:
        pytest.skip("needs shapcam._C")
    monkeypatch.setattr(_engine, "cuda_built", lambda: False)
    monkeypatch.setattr(ops, "_warned_host_copy", False)
    assert ops.route(None, False) == ops.Route("native")
    with pytest.raises(RuntimeError, match="nvcc.*engine='native'"):
        ops.route(None, True)
    with pytest.warns(RuntimeWarning, match="copying"):
        assert ops.route("native", True) == ops.Route("native", host_copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.route("reference", True) == ops.Route("reference", host_copy=True)


def test_deprecated_spellings_still_work(net):
    x = images(1)
    with pytest.warns(DeprecationWarning, match="score"):
        old = ShapCAM(net, "features", K=4, value="logit")
    assert old.score == "logit"
    res = old.explain(x, targets=[1])
    with pytest.warns(DeprecationWarning, match="values"):
        raw = res.raw
    with pytest.warns(DeprecationWarning, match="efficiency_gap"):
        gap = res.efficiency_residual
    assert raw is res.values and gap is res.efficiency_gap
    new = ShapCAM(net, "features", K=4, score="logit").explain(x, targets=[1])
    np.testing.assert_array_equal(new.values.numpy(), res.values.numpy())
