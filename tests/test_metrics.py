"""The evaluation metrics on hand-computed cases, degenerate ones included."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shapcam import metrics  # noqa: E402


class SumModel(nn.Module):
    """logits = (sum of pixels, 0): p(class 0) = sigmoid(sum), computable by hand."""

    def forward(self, x):
        s = x.sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_average_drop_and_increase_by_hand():
    img = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]],
                         [[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    r = metrics.average_drop_increase(SumModel(), img, maps, [0, 1], keep=None)
    Y0, O0 = sig(4), sig(1.5)                 # class 0: sum 4 -> 1.5
    Y1, O1 = 1 - sig(4), 1 - sig(4)           # class 1 with a full map: no change
    drops = [(Y0 - O0) / Y0, 0.0]
    assert r["average_drop"] == pytest.approx(np.mean(drops) * 100, rel=1e-12)
    assert r["increase_in_confidence"] == 0.0
    assert r["Y"][1].item() == pytest.approx(Y1) and r["O"][1].item() == pytest.approx(O1)
    # Class 1 on the first image: confidence rises when the map removes pixels.
    r = metrics.average_drop_increase(SumModel(), img[:1], maps[:1], [1], keep=None)
    assert r["increase_in_confidence"] == 100.0 and r["average_drop"] == 0.0


def test_keep_limits_positive_pixels():
    m = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]])
    np.testing.assert_array_equal(metrics.limit_positive(m, 0.5).numpy(), [[[1.0, 0.5], [0.0, 0.0]]])
    img = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    r = metrics.average_drop_increase(SumModel(), img, m.double(), [0], keep=0.5)
    assert r["O"][0].item() == pytest.approx(sig(1.5))
    with pytest.raises(ValueError, match="keep"):
        metrics.limit_positive(m, 1.5)


def test_zero_probability_and_zero_map():
    class Never(nn.Module):
        def forward(self, x):
            z = x.sum((1, 2, 3)) * 0
            return torch.stack([z - float("inf"), z], 1)

    img = torch.ones(1, 1, 2, 2)
    r = metrics.average_drop_increase(Never(), img, torch.zeros(1, 2, 2), [0], keep=None)
    assert r["Y"][0] == 0 and r["average_drop"] == 0.0 and r["increase_in_confidence"] == 0.0
    # An all-zero map removes everything: the drop is (Y - sigmoid(0)) / Y.
    r = metrics.average_drop_increase(SumModel(), img.double(), torch.zeros(1, 2, 2, dtype=torch.float64), [0], keep=None)
    assert r["average_drop"] == pytest.approx((sig(4) - 0.5) / sig(4) * 100)


def test_energy_pointing_game():
    maps = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]],
                         [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                         [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    boxes = [[(0, 0, 2, 1)],                   # top-left 2x1: energy 3 of 4
             [(0, 0, 3, 2)],                   # all-zero map
             [(0, 0, 3, 2)]]                   # box = whole image
    p = metrics.energy_pointing_game(maps, boxes)
    np.testing.assert_allclose(p.numpy(), [0.75, 0.0, 1.0])
    # Two boxes: their union counts once; a box past the border is clipped.
    p = metrics.energy_pointing_game(maps[:1], [[(0, 0, 2, 1), (1, 0, 9, 9)]])
    assert p[0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.energy_pointing_game(-maps, boxes)


def test_deletion_insertion_by_hand():
    img = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    maps = torch.tensor([[[0.9, 0.1], [0.5, 0.2]]], dtype=torch.float64)
    r = metrics.deletion_insertion(SumModel(), img, maps, [0], steps=2)
    # 0, 2, 4 pixels removed / inserted: sums (4, 2, 0) and (0, 2, 4).
    d = 0.5 * ((sig(4) + sig(2)) / 2 + (sig(2) + sig(0)) / 2)
    i = 0.5 * ((sig(0) + sig(2)) / 2 + (sig(2) + sig(4)) / 2)
    assert r["deletion"] == pytest.approx(d) and r["insertion"] == pytest.approx(i)


def test_bad_shapes():
    img = torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match="maps"):
        metrics.average_drop_increase(SumModel(), img, torch.ones(2, 3, 3), [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_drop_increase(SumModel(), img, torch.full((2, 4, 4), float("nan")), [0, 0])
    with pytest.raises(ValueError, match="one list per map"):
        metrics.energy_pointing_game(torch.ones(2, 4, 4), [[(0, 0, 1, 1)]])
