"""Shap-CAM end to end on torchvision heads (seeded random weights) at K = 4, 16, 64, next to the
ideal (trunk forward + the same evaluations at the head's best throughput), captum's
ShapleyValueSampling and shap's PermutationExplainer on the same game and budget, and
pytorch-grad-cam's GradCAM, GradCAM++ and ScoreCAM on the same model and image.

    pytest benchmarks/bench_shapcam.py
"""
import time

import numpy as np
import pytest

from conftest import TINY

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import shapcam  # noqa: E402
from shapcam.cam import split_model  # noqa: E402

TARGET = 281
CASES = ([("resnet18", "layer4", [2])] if TINY else
         [("resnet18", "layer4", [4, 16, 64]), ("resnet50", "layer4", [4, 16, 64]), ("vgg16", "features.29", [4, 16])])
_cache = {}


def setup(name, layer):
    if name not in _cache:
        torch.manual_seed(0)
        model = getattr(tv.models, name)(weights=None).eval()
        x = torch.rand(1, 3, 224, 224)
        split = split_model(model, layer)
        with torch.no_grad():
            A, extras = split.trunk(x)
        _cache[name] = (model, x, split, A, extras)
    return _cache[name]


def _head_value(split, extras):
    @torch.no_grad()
    def value(feats):
        return torch.softmax(split.head(feats, extras), 1)[:, TARGET]

    return value


def head_rate(split, A, extras):
    """The head's best evaluations/s over a few batch sizes (its ceiling)."""
    value = _head_value(split, extras)
    best = 0.0
    for B in ([8] if TINY else [32, 128, 512]):
        buf = A.expand(B, -1, -1, -1).contiguous()
        value(buf)
        t = time.perf_counter()
        reps = 3
        for _ in range(reps):
            value(buf)
        best = max(best, reps * B / (time.perf_counter() - t))
    return best


def _trunk_time(split, x):
    with torch.no_grad():
        split.trunk(x)
        t = time.perf_counter()
        split.trunk(x)
        return time.perf_counter() - t


IDEAL = {}


@pytest.mark.parametrize("name,layer,Ks", CASES, ids=[c[0] for c in CASES])
def bench_shapcam_vs_peers(benchmark, record, name, layer, Ks):
    model, x, split, A, extras = setup(name, layer)
    h, w = A.shape[-2:]
    n = h * w
    rate = head_rate(split, A, extras)
    trunk = _trunk_time(split, x)
    value = _head_value(split, extras)
    rows = {}
    cam = shapcam.ShapCAM(model, layer, K=1)
    cam.explain(x, targets=[TARGET])  # warm: the fx split is built once per CAM object
    for K in Ks:
        evals = K * (n - 1) + 2
        ideal = trunk + evals / rate
        cam.K = K
        t = time.perf_counter()
        cam.explain(x, targets=[TARGET])
        rows[("shapcam", K)] = time.perf_counter() - t
        rows[("ideal", K)] = ideal
        # captum on the same game (features in, the same head), the same number of permutations
        captum = pytest.importorskip("captum.attr")
        mask = torch.arange(n).reshape(1, 1, h, w)
        svs = captum.ShapleyValueSampling(lambda f: value(f))
        t = time.perf_counter()
        svs.attribute(A, baselines=0.0, feature_mask=mask, n_samples=K,
                      perturbations_per_eval=max(1, min(512, n)))
        rows[("captum", K)] = trunk + time.perf_counter() - t
        if K <= 16:  # shap's PermutationExplainer on boolean coalitions of the same positions
            shap = pytest.importorskip("shap")
            Af = A[0]

            def shap_fn(Z):
                m = torch.as_tensor(Z, dtype=A.dtype).reshape(-1, 1, h, w)
                return value(Af[None] * m).numpy()

            expl = shap.explainers.Permutation(shap_fn, shap.maskers.Independent(np.zeros((1, n)), max_samples=1))
            expl(np.ones((1, n)), max_evals=2 * n + 1, batch_size=512, silent=True)  # warm-up (JIT)
            t = time.perf_counter()
            # shap draws whole antithetic pairs of 2n + 1 evaluations: K / 2 pairs = our K permutations
            expl(np.ones((1, n)), max_evals=max(1, K // 2) * (2 * n + 1), batch_size=512, silent=True)
            rows[("shap", K)] = trunk + time.perf_counter() - t
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group=f"shapcam e2e {name}", n=n, head_rate=rate, trunk_s=trunk,
                                rows={f"{k[0]} K={k[1]}": v for k, v in rows.items()})
    IDEAL[name] = rows


@pytest.mark.parametrize("name,layer,Ks", CASES, ids=[c[0] for c in CASES])
def bench_gradcam_family_vs_pytorch_grad_cam(benchmark, name, layer, Ks):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, split, A, extras = setup(name, layer)
    module = dict(model.named_modules())[layer]
    rows = {}
    for ours, ref in ((shapcam.GradCAM, pgc.GradCAM), (shapcam.GradCAMPlusPlus, pgc.GradCAMPlusPlus),
                      (shapcam.ScoreCAM, pgc.ScoreCAM)):
        if ours is shapcam.ScoreCAM and TINY:
            continue
        cam = ours(model, layer)
        cam(x, targets=[TARGET])
        t = time.perf_counter()
        cam(x, targets=[TARGET])
        rows[f"shapcam.{ours.__name__}"] = time.perf_counter() - t
        with ref(model=model, target_layers=[module]) as rc:
            if ours is shapcam.ScoreCAM:
                rc.batch_size = 64
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):
                rc(input_tensor=x, targets=[ClassifierOutputTarget(TARGET)])
                t = time.perf_counter()
                rc(input_tensor=x, targets=[ClassifierOutputTarget(TARGET)])
            rows[f"pytorch-grad-cam {ref.__name__}"] = time.perf_counter() - t
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group=f"grad-cam family {name}", rows=rows)
    IDEAL[f"{name} cams"] = rows
