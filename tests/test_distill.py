"""The distillation experiment (§4.3) runs end to end in its quick mode, through the CLI too."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from shapcam import cli  # noqa: E402
from shapcam.experiments import distill  # noqa: E402


def test_wide_resnet_shapes_and_cam_layer():
    t, s = distill.wide_resnet(16, 2), distill.wide_resnet(10, 1)
    x = torch.rand(2, 1, 64, 64)
    assert t(x).shape == (2, 10) and s(x).shape == (2, 10)
    assert t.features(x).shape == (2, 128, 4, 4) and s.features(x).shape == (2, 64, 4, 4)
    n_t = sum(p.numel() for p in t.parameters())
    n_s = sum(p.numel() for p in s.parameters())
    assert n_s < n_t / 5  # the student is much smaller
    with pytest.raises(ValueError, match="6N"):
        distill.wide_resnet(11, 1)


def test_student_maps_carry_gradients_for_every_method():
    s = distill.wide_resnet(10, 1).eval()
    x, y = torch.rand(3, 1, 64, 64), torch.tensor([1, 2, 3])
    for m in distill.METHODS:
        res = distill._cam(m, s, 4).explain(x, targets=y.tolist(), create_graph=True)
        loss = distill._normalise(res.values).sum()
        grads = torch.autograd.grad(loss, [p for p in s.parameters()], allow_unused=True)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), m


def test_quick_run_through_the_cli(tmp_path):
    assert cli.main(["distill", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "distill.json").read_text())
    assert len(res["errors"]) == 10  # (CE + 4 explanation losses) x (w/o, w/ L_KD)
    assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in res["errors"].values())
    table = (tmp_path / "table.md").read_text()
    assert "explanation loss (shapcam)" in table and "w/ L_KD" in table
