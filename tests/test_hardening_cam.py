"""Hostile input on the CAM, loading and command-line side: paths that are patterns or loops or
point outside their folder, files that are not files, models and layers that return the wrong
thing, channels-last maps, non-finite pixels and boxes, targets past int64, NumPy scalars, and
work that must be done in pieces. Each case ends in the right result or a one-line error that
names the argument and what is expected."""
import json
import os
import re

import numpy as np
import pytest

import shapcam

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from shapcam import cli  # noqa: E402
from shapcam.cam import (GradCAM, GradCAMPlusPlus, MeaningfulPerturbation, RISE,  # noqa: E402
                         ScoreCAM, ShapCAM)
from shapcam.models import digits  # noqa: E402

ALL_CAMS = [(ShapCAM, {"K": 4}), (GradCAM, {}), (GradCAMPlusPlus, {}), (ScoreCAM, {}),
            (RISE, {"n_masks": 8}), (MeaningfulPerturbation, {"iterations": 2})]


def _png(path, a):
    from PIL import Image

    Image.fromarray(a).save(path)
    return str(path)


def _digit(i=0):
    return digits.load_heldout()["images"][i]


def _main(capsys, *argv):
    rc = cli.main(list(argv))
    return rc, capsys.readouterr()


def _one_line_error(rc, out, pattern):
    err = out.err.strip()
    assert rc == 2, (rc, out.err)
    assert "Traceback" not in err and "\n" not in err, err
    assert re.search(pattern, err), err


# --- paths ------------------------------------------------------------------------------------

def test_evaluate_paths_with_glob_characters(tmp_path, capsys):
    out = tmp_path / "res[1]"
    rc, o = _main(capsys, "evaluate", "--methods", "gradcam", "--limit", "2", "--out", str(out))
    assert rc == 0, o.err
    assert "2 images" in (out / "table.md").read_text().splitlines()[0]
    assert len((out / "per_image.csv").read_text().splitlines()) == 3
    data = tmp_path / "imgs[x]"
    data.mkdir()
    _png(data / "a.png", _digit(0))
    _png(data / "b*.png", _digit(1))
    rc, o = _main(capsys, "evaluate", "--model", "digits", "--data", str(data), "--methods",
                  "gradcam", "--out", str(tmp_path / "o2"))
    assert rc == 0, o.err
    assert "2 images" in (tmp_path / "o2" / "table.md").read_text().splitlines()[0]


def _voc_xml(path, filename, box=(10, 10, 30, 30), name="seven", size=64):
    x0, y0, x1, y1 = box
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size}</width>"
                    f"<height>{size}</height></size><object><name>{name}</name><bndbox>"
                    f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                    f"</bndbox></object></annotation>")


def test_voc_reads_only_its_own_images(tmp_path):
    from shapcam.evaluate import voc_dataset
    from shapcam.loading import DIGITS_INPUT

    root = tmp_path / "voc[1]"
    images, ann = root / "JPEG[s]", root / "Ann*"
    images.mkdir(parents=True), ann.mkdir()
    (tmp_path / "secret.png").write_bytes(b"outside IMAGES")
    classes = tmp_path / "classes.txt"
    classes.write_text("zero\nseven\n")
    _png(images / "good.png", _digit(0))
    _voc_xml(ann / "good.xml", "good.png")
    _png(images / "img1.png", _digit(1))          # unrelated to img?.xml below
    _voc_xml(ann / "img?.xml", "img?.jpg")        # its image is missing: a glob would take img1
    _voc_xml(ann / "up.xml", "../secret.png")     # outside IMAGES
    _voc_xml(ann / "abs.xml", str(tmp_path / "secret.png"))
    _voc_xml(ann / "nan.xml", "good.png", box=("nan", 10, 30, 30))
    _png(images / "other.png", _digit(2))
    _voc_xml(ann / "other.xml", "renamed.png")    # missing under its name: found by its own stem
    ds = voc_dataset(str(images), str(ann), str(classes), DIGITS_INPUT)
    assert sorted(it.id for it in ds.items) == ["good.png", "other.png"]
    assert ds.skipped == {"image missing": 1, "image name with a folder in it": 2,
                          "malformed XML": 1}


def test_folder_symlink_loops_list_each_image_once(tmp_path):
    from shapcam.evaluate import image_files

    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    _png(d / "a.png", _digit(0))
    _png(d / "sub" / "b.png", _digit(1))
    os.symlink(d, d / "sub" / "loop")        # a loop back to the top
    os.symlink(d / "sub", d / "again")       # a second way into sub
    (d / "x").mkdir()
    os.symlink(d / "x", d / "x" / "self")    # a folder that contains itself
    files = image_files(str(d))
    assert [os.path.basename(f) for f in files] == ["a.png", "b.png"], files


# --- files that are not files, devices that do not exist -------------------------------------

def test_cli_files_and_devices_that_are_not_what_they_say(tmp_path, capsys):
    img = _png(tmp_path / "d.png", _digit())
    o = str(tmp_path / "o")
    for argv, pattern in (
            (["explain", img, "--model", "/dev/zero", "--out", o], "not a regular file"),
            (["explain", img, "--device", "bogus", "--out", o], "--device 'bogus': not a device"),
            (["explain", img, "--device", "cuda:7", "--out", o], "--device cuda:7"),
            (["evaluate", "--device", "bogus", "--out", o], "not a device")):
        rc, out = _main(capsys, *argv)
        _one_line_error(rc, out, pattern)
    ev = tmp_path / "ev"
    (ev / "run.json").mkdir(parents=True)
    rc, out = _main(capsys, "evaluate", "--methods", "gradcam", "--limit", "1", "--out", str(ev))
    _one_line_error(rc, out, "run.json is not a file")
    ev2 = tmp_path / "ev2"
    (ev2 / "per_image.jsonl").mkdir(parents=True)
    rc, out = _main(capsys, "evaluate", "--methods", "gradcam", "--limit", "1", "--out", str(ev2))
    _one_line_error(rc, out, "per_image.jsonl is not a file")


def test_an_architecture_name_is_not_taken_for_a_folder(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    from shapcam.loading import load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18").mkdir()
    model, _ = load_model("resnet18")
    assert type(model).__name__ == "ResNet"
    # a state dict whose --arch names a folder here too
    torch.save(model.state_dict(), tmp_path / "w.pt")
    model2, _ = load_model(str(tmp_path / "w.pt"), arch="resnet18")
    assert type(model2).__name__ == "ResNet"
    with pytest.raises(ValueError, match="not a regular file"):
        load_model("./resnet18")


# --- pixels and targets -----------------------------------------------------------------------

def _nan_tiff(path):
    from PIL import Image

    a = np.full((64, 64), 0.5, np.float32)
    a[3, 4] = np.nan
    Image.fromarray(a, mode="F").save(path)
    return str(path)


def test_non_finite_pixels_name_the_file_and_are_skipped_by_evaluate(tmp_path, capsys):
    bad = _nan_tiff(tmp_path / "nan.tif")
    rc, out = _main(capsys, "explain", bad, "--out", str(tmp_path / "o"))
    _one_line_error(rc, out, re.escape(bad) + ".*NaN or infinite")
    d = tmp_path / "imgs"
    d.mkdir()
    _nan_tiff(d / "nan.tif")
    _png(d / "ok.png", _digit())
    rc, out = _main(capsys, "evaluate", "--data", str(d), "--methods", "gradcam", "--out",
                    str(tmp_path / "ev"))
    assert rc == 0, out.err
    header = (tmp_path / "ev" / "table.md").read_text().splitlines()[0]
    assert "1 images" in header and "'unreadable image': 1" in header


def test_targets_past_int64_are_a_range_error(tmp_path, capsys):
    model = digits.load_model()
    x = digits.to_tensor(digits.load_heldout()["images"][:2])
    for t in (2**63, [2**63, 1], -2**64, np.array([2**63, 0], dtype=np.uint64)):
        with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\)"):
            GradCAM(model, digits.TARGET_LAYER).explain(x, targets=t)
    img = _png(tmp_path / "d.png", _digit())
    rc, out = _main(capsys, "explain", img, "--method", "gradcam", "--target",
                    "99999999999999999999", "--out", str(tmp_path / "o"))
    _one_line_error(rc, out, r"class ids must lie in \[0, 10\)")


def test_numpy_scalars_are_numbers():
    model = digits.load_model()
    RISE(model, p=np.float32(0.5), n_masks=np.int64(8))
    m = MeaningfulPerturbation(model, lr=np.float32(0.1), noise=np.float64(0.2))
    assert isinstance(m.lr, float)
    with pytest.raises(ValueError, match="p:"):
        RISE(model, p=np.bool_(True))


# --- models and layers that return the wrong thing -------------------------------------------

class _Net(nn.Module):
    def __init__(self, kind="plain"):
        super().__init__()
        self.kind = kind
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        z = self.fc(self.features(x).mean((2, 3)))
        return {"tuple": (z, z), "dict": {"logits": z}, "plain": z}[self.kind]


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        return y, y.mean()


class _PairNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features, self.fc = _Pair(), nn.Linear(8, 5)

    def forward(self, x):
        a, _ = self.features(x)
        return self.fc(torch.relu(a).mean((2, 3)))


@pytest.mark.parametrize("cls,kw", ALL_CAMS)
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_a_model_that_returns_a_tuple_or_dict_is_named(cls, kw, kind):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=f"model: its forward returned a {kind}.*logits as one tensor"):
        cls(_Net(kind), "features", **kw).explain(torch.rand(2, 3, 12, 12))


@pytest.mark.parametrize("split", ["auto", "hooks"])
@pytest.mark.parametrize("cls,kw", ALL_CAMS[:4])
def test_a_layer_that_returns_a_tuple_is_named(cls, kw, split):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="target_layer 'features' returns a tuple of 2"):
        cls(_PairNet(), "features", split=split, **kw).explain(torch.rand(2, 3, 12, 12))
    # the submodule that makes the map works
    res = cls(_PairNet(), "features.c", split=split, **kw).explain(torch.rand(2, 3, 12, 12))
    assert res.values.shape == (2, 12, 12)


# --- channels-last maps -----------------------------------------------------------------------

class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class _ChannelsLast(nn.Module):
    """A Swin-like tail: stages in [N, h, w, C], LayerNorm over C, then channels-first pooling."""

    def __init__(self, C=12, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 4, stride=4), _Permute(0, 2, 3, 1))
        self.stage = nn.Sequential(nn.Linear(C, C), nn.GELU())   # [N, h, w, C]
        self.norm = nn.LayerNorm(C)
        self.permute = _Permute(0, 3, 1, 2)
        self.head = nn.Linear(C, classes)

    def forward(self, x):
        a = self.permute(self.norm(self.stage(self.stem(x))))
        return self.head(a.mean((2, 3)))


@pytest.mark.parametrize("cls,kw", ALL_CAMS[:4])
def test_channels_last_maps_are_refused_not_misread(cls, kw):
    torch.manual_seed(0)
    model = _ChannelsLast().eval()
    x = torch.rand(1, 3, 16, 24)  # a 4 x 6 grid: the shape alone cannot tell
    with pytest.raises(ValueError, match="looks channels-last.*LayerNorm over its last axis"):
        cls(model, "stage", **kw).explain(x)
    with pytest.raises(ValueError, match="looks channels-last.*square 4x4 grid"):
        cls(model, "norm", **kw).explain(torch.rand(1, 3, 16, 16))
    res = cls(model, "permute", **kw).explain(x)  # channels-first after the permute: read right
    assert res.values.shape == (1, 4, 6)
    # layout="nchw": the caller says it is channels-first; no check
    assert cls(model, "stage", layout="nchw", **kw).explain(x).values.shape == (1, 6, 12)
    with pytest.raises(ValueError, match="layout"):
        cls(model, "permute", layout="nhwc", **kw)


def test_torchvision_swin_last_stage_is_refused_and_its_permute_explained():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.swin_t().eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="looks channels-last"):
        ShapCAM(model, "features.7", K=2).explain(x)
    res = GradCAM(model, "permute").explain(x)
    assert res.values.shape == (1, 2, 2)


# --- work in pieces ---------------------------------------------------------------------------

class _Recorder(nn.Module):
    """The bundled model, recording the largest batch its trunk and whole forward saw."""

    def __init__(self):
        super().__init__()
        self.inner = digits.load_model()
        self.max_batch = 0

    def forward(self, x):
        self.max_batch = max(self.max_batch, x.shape[0])
        return self.inner(x)


@pytest.mark.filterwarnings("ignore:torch.fx could not trace")
def test_explain_runs_a_large_batch_in_passes_with_the_same_maps():
    x = digits.to_tensor(digits.load_heldout()["images"][:37])
    rec = _Recorder()
    cam = GradCAM(rec, "inner." + digits.TARGET_LAYER)
    whole = cam.explain(x, targets=list(range(10)) * 3 + [1] * 7)
    assert rec.max_batch <= cam.images_per_pass == 16
    cam.images_per_pass = 64
    one = cam.explain(x, targets=list(range(10)) * 3 + [1] * 7)
    torch.testing.assert_close(whole.maps, one.maps, rtol=0, atol=0)
    assert whole.targets.tolist() == one.targets.tolist()
    sc = ShapCAM(digits.load_model(), digits.TARGET_LAYER, K=4)
    sc.images_per_pass = 3
    a = sc.explain(x[:7], targets=[[1, 2]] * 7)
    sc.images_per_pass = 16
    b = sc.explain(x[:7], targets=[[1, 2]] * 7)
    assert a.values.shape == (7, 2, 8, 8) and a.n_evals == b.n_evals and a.path == b.path
    # the trunk's float32 convolutions may sum in another order for another batch size: the
    # feature maps differ in their last bits (measured: 6e-8 on values of ~1e-2)
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.stderr, b.stderr, rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="one entry per image"):
        cam.explain(x, targets=[1, 2])


@pytest.mark.filterwarnings("ignore:torch.fx could not trace")
def test_deletion_insertion_steps_are_capped_and_batched():
    from shapcam import metrics

    x = digits.to_tensor(digits.load_heldout()["images"][:1])[:, :, :16, :16]
    rec = _Recorder()
    maps = torch.rand(1, 16, 16)
    big = metrics.deletion_insertion(rec, x, maps, [3], steps=16384, batch_size=32)
    assert rec.max_batch <= 32
    exact = metrics.deletion_insertion(rec, x, maps, [3], steps=256, batch_size=1000)
    # 256 = H * W points either way; the float32 model's batches differ (measured: 1.5e-12)
    assert big["deletion"] == pytest.approx(exact["deletion"], abs=1e-9)
    assert big["insertion"] == pytest.approx(exact["insertion"], abs=1e-9)


def test_glm_link_and_shapes_are_checked():
    from scipy.special import expit

    w, x = np.array([1.0, -2.0, 3.0]), np.ones(3)
    g = shapcam.CellTableGame.glm(w, x, link=lambda z: expit(z[:, 0]))  # [B] for one output
    g2 = shapcam.CellTableGame.glm(w, x, link=expit)                     # [B, 1]
    np.testing.assert_array_equal(shapcam.estimate_shapley(g, K=8).values,
                                  shapcam.estimate_shapley(g2, K=8).values)
    for kw, pattern in ((dict(link=lambda z: 0.5), r"link: returned shape \(\)"),
                        (dict(baseline=np.zeros(4)), r"baseline: expected a number or \[p=3\]"),
                        (dict(intercept=np.zeros(3)), r"intercept: expected a number or \[m=1\]")):
        with pytest.raises(ValueError, match=pattern):
            shapcam.estimate_shapley(shapcam.CellTableGame.glm(w, x, **kw), K=8)
    with pytest.raises(ValueError, match=r"link: returned shape \(2,\)"):
        shapcam.estimate_shapley(
            shapcam.CellTableGame.glm(np.ones((3, 2)), x, link=lambda z: expit(z[:, 0])), K=8)


# --- baselines in the input's own units -------------------------------------------------------

class _ScaleFree(nn.Module):
    """A classifier that sees its input only up to scale (x / its sd): a faithful perturbation
    method gives it the same map whatever the units of the pixels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = x / x.flatten(1).std(1)[:, None, None, None]
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_mask_noise_follows_the_input_units():
    model = _ScaleFree().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 3, 24, 24), generator=g)
    a = MeaningfulPerturbation(model, iterations=20, mask_scale=4).explain(x, targets=[1])
    b = MeaningfulPerturbation(model, iterations=20, mask_scale=4).explain(x * 8.0, targets=[1])
    # float32 arithmetic on inputs 8x larger (measured: 3e-6)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=1e-4)


def test_grid_row_labels_are_whole(tmp_path):
    from shapcam import viz

    x = torch.rand((1, 3, 48, 48))
    path = viz.grid(x, {"m": torch.rand((1, 48, 48))}, str(tmp_path / "g.png"),
                    row_labels=["chelsea: Egyptian cat"])
    from PIL import Image

    label = np.asarray(Image.open(path).convert("L"))[:, :90]
    rows_with_ink = np.flatnonzero((label < 128).any(1))
    assert rows_with_ink.max() - rows_with_ink.min() > 12  # two lines: nothing cut at 14 characters


# --- a shared activation module: its output at one call site ---------------------------------

class _SharedAct(nn.Module):
    """One ReLU module called after every convolution (as EfficientNet's _swish is)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def test_a_shared_activation_is_named_by_its_call_site():
    from shapcam.loading import default_layer

    model = _SharedAct().eval()
    x = torch.rand((2, 3, 10, 10))
    assert default_layer(model, x[:1]) == "act@1"
    fx = GradCAM(model, "act@1").explain(x, targets=[1, 2])
    hooks = GradCAM(model, "act@1", split="hooks").explain(x, targets=[1, 2])
    last = GradCAM(model, "act@-1", split="hooks").explain(x, targets=[1, 2])
    torch.testing.assert_close(fx.values, hooks.values, rtol=0, atol=0)
    torch.testing.assert_close(fx.values, last.values, rtol=0, atol=0)
    sc = ShapCAM(model, "act@1", K=8).explain(x, targets=[1, 2])
    assert sc.path == "incremental" and float(sc.efficiency_gap.abs().max()) < 1e-9
    for split in ("auto", "hooks"):
        with pytest.raises(ValueError, match=r"act@0 \.\. act@1"):
            GradCAM(model, "act", split=split).explain(x)
    with pytest.raises(ValueError, match="called 2 times"):
        GradCAM(model, "act@2").explain(x)
    with pytest.raises(ValueError, match="call index"):
        GradCAM(model, "act@last")
