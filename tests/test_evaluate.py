"""The evaluation runner: its table equals the metrics computed directly; resume; 2-process
torchrun equals 1 process; VOC XML and image folders, with bad entries skipped and counted."""
import csv
import json
import os
import socket
import subprocess
import tempfile
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")

from shapcam import cli  # noqa: E402
from shapcam.cam import GradCAM, ShapCAM  # noqa: E402
from shapcam.evaluate import parse_voc  # noqa: E402
from shapcam.models import digits  # noqa: E402

# Subprocesses run outside the source tree: `python -c/-m` puts the cwd on sys.path, and the
# tests are about the installed package.
ROOT = tempfile.gettempdir()
ARGS = ["--methods", "gradcam,shapcam", "--K", "4"]


def read_csv(path, drop=("seconds",)):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def run_eval(out, *extra):
    assert cli.main(["evaluate", "--out", str(out), *ARGS, *extra]) == 0
    return read_csv(out / "per_image.csv")


def _by_hand(model, x, sal, target, box, keep=0.5):
    """Average Drop (%) and the energy pointing game (%) written out from their definitions with
    NumPy, independent of shapcam.metrics: keep the top `keep` fraction of the map's pixels, O =
    the target's probability on image * kept map, drop = max(0, Y - O) / Y; energy = the share of
    the map's sum inside the box."""
    s = sal.numpy().astype(np.float64).ravel()
    k = int(round(keep * s.size))
    thresh = np.sort(s)[::-1][k - 1]
    kept = np.where(s >= thresh, s, 0.0).reshape(sal.shape)

    def prob(img):
        with torch.no_grad():
            z = model(img[None]).double()[0].numpy()
        e = np.exp(z - z.max())
        return e[target] / e.sum()

    Y = prob(x)
    O = prob(x * torch.from_numpy(kept).to(x.dtype)[None])
    x0, y0, x1, y1 = (int(v) for v in box)
    m = sal.numpy().astype(np.float64)
    return max(0.0, Y - O) / Y * 100, m[y0:y1, x0:x1].sum() / m.sum() * 100


def test_table_equals_metrics_by_hand(tmp_path):
    rows = run_eval(tmp_path, "--limit", "3")
    assert len(rows) == 6
    model = digits.load_model()
    data = digits.load_heldout()
    x = digits.to_tensor(data["images"][:3])
    for cls, name in ((GradCAM, "gradcam"), (ShapCAM, "shapcam")):
        cam = cls(model, "features", K=4) if cls is ShapCAM else cls(model, "features")
        got = [r for r in rows if r["method"] == name]
        for i in range(3):
            t = int(data["labels"][i])
            maps = cam(x[i:i + 1], targets=[t])
            drop, energy = _by_hand(model, x[i], maps[0], t, data["boxes"][i])
            assert int(got[i]["target"]) == t
            assert float(got[i]["average_drop"]) == pytest.approx(drop, abs=1e-6)
            assert float(got[i]["proportion"]) == pytest.approx(energy, abs=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    drops = [float(r["average_drop"]) for r in rows if r["method"] == "shapcam"]
    assert summary["shapcam"]["average_drop"][0] == pytest.approx(np.mean(drops))
    half = 1.96 * np.std(drops, ddof=1) / np.sqrt(len(drops))
    assert summary["shapcam"]["average_drop"][1] == pytest.approx(half)
    assert "| Average Drop (%)" in (tmp_path / "table.md").read_text()
    # the paired comparison: shapcam - gradcam over the same images, by hand
    paired = json.loads((tmp_path / "summary.json").read_text())["paired_vs_shapcam"]
    g = {r["id"]: float(r["proportion"]) for r in rows if r["method"] == "gradcam"}
    d = [float(r["proportion"]) - g[r["id"]] for r in rows if r["method"] == "shapcam"]
    mean, half, n = paired["gradcam"]["proportion"]
    assert n == 3 and mean == pytest.approx(np.mean(d))
    assert half == pytest.approx(1.96 * np.std(d, ddof=1) / np.sqrt(3))
    assert "shapcam − method" in (tmp_path / "table.md").read_text()


def test_resume_equals_uninterrupted(tmp_path):
    full = run_eval(tmp_path / "full", "--limit", "4")
    part = tmp_path / "part"
    run_eval(part, "--limit", "2")                      # "interrupted" after two images
    with open(part / "per_image.jsonl", "a") as f:  # and a record torn mid-write
        f.write('{"id": "digits-0002", "meth')
    first = [json.loads(l) for l in open(part / "per_image.jsonl").read().splitlines()[:4]]
    resumed = run_eval(part, "--limit", "4")
    assert resumed == full
    again = [json.loads(l) for l in open(part / "per_image.jsonl").read().splitlines()[:4]]
    assert [r["seconds"] for r in again] == [r["seconds"] for r in first]  # not recomputed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_equals_one_process(tmp_path):
    single = run_eval(tmp_path / "one", "--limit", "5")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "shapcam.cli", "evaluate", "--limit", "5", "--out", str(tmp_path / "two"), *ARGS]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "two")).count("per_image.rank1.jsonl") == 1
    assert read_csv(tmp_path / "two" / "per_image.csv") == single


def _voc_xml(path, fname, w, h, objs):
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objs)
    path.write_text(f"<annotation><filename>{fname}</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>1</depth></size>{body}</annotation>")


def test_voc_dataset_filters_and_counts(tmp_path):
    data = digits.load_heldout()
    img, ann = tmp_path / "img", tmp_path / "ann"
    img.mkdir(), ann.mkdir()
    for i in range(2):
        PIL.fromarray(data["images"][i]).resize((128, 128)).save(img / f"a{i}.png")
        x0, y0, x1, y1 = (int(v) * 2 for v in data["boxes"][i])
        _voc_xml(ann / f"a{i}.xml", f"a{i}.png", 128, 128, [(str(data["labels"][i]), (x0 + 1, y0 + 1, x1, y1))])
    PIL.fromarray(data["images"][2]).save(img / "big.png")
    _voc_xml(ann / "big.xml", "big.png", 64, 64, [("3", (1, 1, 60, 60))])          # object too large
    _voc_xml(ann / "out.xml", "a0.png", 128, 128, [("3", (100, 100, 140, 120))])   # box outside
    _voc_xml(ann / "gone.xml", "missing.png", 64, 64, [("3", (1, 1, 10, 10))])     # image missing
    (ann / "bad.xml").write_text("<annotation><filename>a0.png</filename><size>")  # malformed
    _voc_xml(ann / "two.xml", "a1.png", 128, 128, [("3", (1, 1, 9, 9)), ("3", (20, 20, 30, 30))])
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(str(d) for d in range(10)))
    out = tmp_path / "out"
    rows = run_eval(out, "--data", f"voc:{img}:{ann}", "--classes", str(classes))
    assert len(rows) == 4 and all(r["proportion"] for r in rows)
    assert {r["target"] for r in rows} == {str(data["labels"][0]), str(data["labels"][1])}
    header = (out / "table.md").read_text().splitlines()[0]
    for reason in ("malformed XML", "image missing", "box outside the image", "covers 50%",
                   "not exactly one box"):
        assert reason in header
    with pytest.raises(ValueError, match="malformed"):
        parse_voc(ann / "bad.xml")


def test_image_folder_recognition_only(tmp_path, capsys):
    data = digits.load_heldout()
    (tmp_path / "imgs" / "cls").mkdir(parents=True)
    for i in range(2):
        PIL.fromarray(data["images"][i]).save(tmp_path / "imgs" / "cls" / f"{i}.png")
    rows = run_eval(tmp_path / "out", "--data", str(tmp_path / "imgs"))
    assert len(rows) == 4 and all(r["proportion"] == "" for r in rows)
    assert cli.main(["evaluate", "--data", str(tmp_path / "out"), "--out", str(tmp_path / "o2")]) == 2
    assert "no images" in capsys.readouterr().err


def test_evaluate_road_and_sanity_columns(tmp_path, capsys):
    from shapcam import cli

    out = tmp_path / "ev"
    rc = cli.main(["evaluate", "--methods", "shapcam,gradcam++", "--limit", "2", "--road",
                   "--sanity", "--K", "16", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    table = (out / "table.md").read_text()
    for label in ("ROAD MoRF", "ROAD LeRF", "ROAD combined", "Randomization ρ, classifier",
                  "Randomization ρ, all layers", "|φ| > 2 SE", "two seeds"):
        assert label in table, label
    recs = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    for r in recs:
        assert r["road_combined"] == pytest.approx((r["road_lerf"] - r["road_morf"]) / 2)
        assert -1 <= r["sanity_top"] <= 1 and -1 <= r["sanity_all"] <= 1
        assert ("sign_resolved" in r) == (r["method"] == "shapcam")
    # Grad-CAM++ barely changes when the classifier is re-initialised on this model (Adebayo
    # et al.'s finding for gradient-times-activation maps); Shap-CAM's map does
    top = {r["method"]: r["sanity_top"] for r in recs if r["id"] == recs[0]["id"]}
    assert top["shapcam"] < top["gradcam++"]
