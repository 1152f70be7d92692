"""The command line: `shapcam demo` on the bundled model, `shapcam explain` writing valid PNGs."""
import json
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")

from shapcam.models import digits  # noqa: E402

# Subprocesses run outside the source tree: `python -c/-m` puts the cwd on sys.path, and the
# tests are about the installed package.
ROOT = tempfile.gettempdir()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, "-m", "shapcam.cli", *args], capture_output=True, text=True,
                         cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _is_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    im = PIL.open(path)
    im.load()
    return im


def test_demo_runs_end_to_end(tmp_path):
    out = run_cli("demo", "--n", "3", "--K", "8", "--out", str(tmp_path))
    # one section per bundled model: the average-pooling head, then VGG16's kind of head
    sections = [sec for sec in out.split("shapcam demo")[1:]]
    assert len(sections) == 2 and "digits CNN" in sections[0] and "digits-vgg" in sections[1]
    for sec, grid in zip(sections, ("demo_grid.png", "demo_grid_vgg.png")):
        lines = sec.splitlines()
        assert "eff. gap" in lines[1]
        # the timing table: exactly one row per method, read by its first column
        start = next(i for i, l in enumerate(lines) if l.split()[:1] == ["method"])
        rows = [l.split() for l in lines[start + 1:] if l.strip() and not l.startswith("wrote")]
        assert [r[0] for r in rows] == ["shapcam", "gradcam", "gradcam++", "scorecam"]
        assert all(float(r[1]) > 0 for r in rows)
        # both heads (GAP + Linear; 2x2 max-pool cells + flatten + 2 FC) take the incremental path
        assert rows[0][2] == "incremental" and all(r[2] == "-" for r in rows[1:])
        # the per-image table: efficiency gaps are tiny
        gaps = [float(l.split()[-1]) for l in lines[2:start]]
        assert len(gaps) == 3 and max(abs(g) for g in gaps) < 1e-9
        im = _is_png(tmp_path / grid)
        assert im.width > 5 * 128 and im.height > 3 * 128  # 5 columns x 3 rows of 128 px tiles


def test_explain_writes_pngs_and_json(tmp_path):
    data = digits.load_heldout()
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        PIL.fromarray(data["images"][i]).save(p)
        paths.append(str(p))
    out_dir = tmp_path / "out"
    run_cli("explain", *paths, "--method", "shapcam,gradcam", "--K", "4", "--out", str(out_dir))
    for i in range(2):
        for m in ("shapcam", "gradcam"):
            im = _is_png(out_dir / f"img{i}_{m}.png")
            assert im.size == (64, 64)
    _is_png(out_dir / "grid.png")
    res = json.loads((out_dir / "results.json").read_text())
    assert res["layer"] == "features" and len(res["results"]) == 2
    assert abs(res["results"][0]["efficiency_gap"]) < 1e-9


def test_explain_torchvision_model_and_bad_method(tmp_path):
    pytest.importorskip("torchvision")
    p = tmp_path / "rgb.png"
    PIL.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(p)
    run_cli("explain", str(p), "--model", "resnet18", "--method", "gradcam", "--out", str(tmp_path / "o"))
    _is_png(tmp_path / "o" / "rgb_gradcam.png")
    bad = subprocess.run([sys.executable, "-m", "shapcam.cli", "explain", str(p), "--method", "magic"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "unknown" in bad.stderr


def test_bundled_model_accuracy_and_size():
    """The shipped weights are small and as accurate as promised on the shipped held-out set."""
    data = digits.load_heldout()
    for arch, path, size, bar in (("cnn", digits.WEIGHTS, 2, 0.95), ("vgg", digits.WEIGHTS_VGG, 4, 0.97)):
        assert os.path.getsize(path) <= size * 2**20
        model = digits.load_model(arch=arch)
        with torch.no_grad():
            pred = model(digits.to_tensor(data["images"])).argmax(1).numpy()
        assert (pred == data["labels"]).mean() >= bar, arch
    # Boxes are inside the image and cover under half of it.
    b = data["boxes"]
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= digits.CANVAS).all()
    assert ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) < digits.CANVAS ** 2 / 2).all()


def test_dataset_is_deterministic():
    pytest.importorskip("sklearn")
    a = digits.make_canvases(5, seed=2, digit_ids=digits.HELDOUT_DIGITS)
    b = digits.make_canvases(5, seed=2, digit_ids=digits.HELDOUT_DIGITS)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    held = digits.load_heldout()
    np.testing.assert_array_equal(a["images"], held["images"][:5])  # the bundled file is this
