"""RISE and the meaningful-perturbation mask: hand-checkable cases, seeds, batch invariance."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import shapcam  # noqa: E402
from shapcam.cam import METHODS, MeaningfulPerturbation, RISE, make_cam  # noqa: E402

H = W = 16
REGION = (slice(4, 10), slice(6, 12))  # rows, cols


class RegionNet(nn.Module):
    """Class 0's logit is 8 x the mean of channel 0 inside REGION; class 1's is constant."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0, dtype=torch.float64))

    def forward(self, x):
        r = x[:, 0, REGION[0], REGION[1]].mean((1, 2))
        return torch.stack([self.scale * r, torch.full_like(r, 2.0)], 1)


def image():
    x = torch.zeros(1, 3, H, W, dtype=torch.float64)
    x[:, :, REGION[0], REGION[1]] = 1.0  # the object the class responds to
    return x


def inside_vs_outside(m):
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[REGION] = True
    return float(m[inside].mean()), float(m[~inside].mean())


def test_rise_with_one_mask_is_score_times_mask_over_p():
    net, x = RegionNet().eval(), image()
    rise = RISE(net, n_masks=1, p=0.4, seed=3)
    res = rise.explain(x, targets=[0])
    M = rise.masks(0, 1, H, W, dtype=torch.float64)[0, 0]
    score = torch.softmax(net(x * M), 1)[0, 0]
    np.testing.assert_allclose(res.values[0].numpy(), (score * M / 0.4).detach().numpy(), atol=1e-12)
    assert M.min() >= 0 and M.max() <= 1


def test_rise_lights_the_region_and_is_reproducible():
    net, x = RegionNet().eval(), image()
    a = RISE(net, n_masks=400, cells=4, seed=1, batch_size=64).explain(x, targets=[0])
    inside, outside = inside_vs_outside(a.maps[0])
    assert inside > outside + 0.2, (inside, outside)
    b = RISE(net, n_masks=400, cells=4, seed=1, batch_size=7).explain(x, targets=[0])
    np.testing.assert_allclose(a.values.numpy(), b.values.numpy(), atol=1e-12)  # batch size
    c = RISE(net, n_masks=400, cells=4, seed=2).explain(x, targets=[0])
    assert not torch.equal(a.values, c.values)


def test_mask_lights_the_region_and_is_batch_invariant():
    net = RegionNet().eval()
    x = image()
    cam = MeaningfulPerturbation(net, iterations=60, mask_scale=2, blur_sigma=20.0, seed=0)
    res = cam.explain(x, targets=[0])
    inside, outside = inside_vs_outside(res.maps[0])
    assert inside > outside + 0.2, (inside, outside)
    two = torch.cat([x, x.flip(-1)])
    both = cam.explain(two, targets=[0, 0])
    np.testing.assert_allclose(both.values[0].numpy(), res.values[0].numpy(), atol=1e-10)
    again = MeaningfulPerturbation(net, iterations=60, mask_scale=2, blur_sigma=20.0, seed=0).explain(x, targets=[0])
    np.testing.assert_array_equal(again.values.numpy(), res.values.numpy())


def test_registry_and_bad_input():
    assert METHODS["rise"] is RISE and METHODS["mask"] is MeaningfulPerturbation
    assert shapcam.RISE is RISE and shapcam.MeaningfulPerturbation is MeaningfulPerturbation
    net = RegionNet().eval()
    r = make_cam("rise", net, "ignored-layer", K=4, batch_size=9, score="logit")
    assert r.batch_size == 9 and r.score == "logit"
    for bad in ({"n_masks": 0}, {"p": 0}, {"p": 1.5}, {"cells": 0}):
        with pytest.raises(ValueError):
            RISE(net, **bad)
    with pytest.raises(ValueError):
        MeaningfulPerturbation(net, iterations=0)
    with pytest.raises(ValueError, match="create_graph"):
        RISE(net, n_masks=2).explain(image(), create_graph=True)


class _Texture(torch.nn.Module):
    """A model whose answer is known: class 1's logit counts a checkerboard texture (the 4x4
    checker filter's response above 0.1, so small noise does not fire it); class 0 is 0. A
    textured box alone makes class 1 (0.97); blurred away, class 0."""

    def forward(self, x):
        import torch.nn.functional as F

        k = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2).float() * 2 - 1
        r = F.conv2d(x.mean(1, keepdim=True), k[None, None].to(x)) / 16
        e = torch.relu(r.abs() - 0.1).mean((1, 2, 3)) * 650 - 4
        return torch.stack([torch.zeros_like(e), e], 1)


def test_mask_localises_the_box_that_makes_the_class():
    import torch.nn.functional as F

    from shapcam import metrics

    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand((1, 3, 6, 6), generator=g), size=(48, 48), mode="bilinear",
                      align_corners=False)
    box = (28, 8, 40, 20)  # x0, y0, x1, y1: 6% of the image
    checker = ((torch.arange(12)[:, None] + torch.arange(12)[None]) % 2).float()
    x[:, :, 8:20, 28:40] = 0.2 + 0.6 * checker
    model = _Texture()
    assert float(torch.softmax(model(x), 1)[0, 1]) > 0.95
    res = MeaningfulPerturbation(model, iterations=300, mask_scale=4).explain(x, targets=[1])
    inside = float(res.maps[0, 8:20, 28:40].mean())
    assert inside > 4 * float(res.maps.mean())  # measured: 0.83 against 0.16
    # the energy in the box: 5x chance (measured 0.32 against 0.0625; the 4-pixel mask cells and
    # the blur spread it around the box)
    assert float(metrics.energy_pointing_game(res.maps, [[box]])[0]) > 0.25
