"""Shap-CAM's incremental path against its fused path, our Grad-CAM and captum, end to end on one
224x224 image (torchvision architectures, seeded random weights, float32, this machine's CPU).

Each row times, in one run and side by side: ShapCAM(incremental=None) (the benchmark proper),
ShapCAM(incremental=False) on the same seed and K, GradCAM on the same image, and (ResNets)
captum's ShapleyValueSampling on the same game and budget; the ratios are what to read.

    pytest benchmarks/bench_incremental.py      # SHAPCAM_BENCH_TINY=1: one tiny case
"""
import statistics
import time

import pytest

from conftest import TINY

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

from shapcam.cam import GradCAM, ShapCAM  # noqa: E402

# (architecture, layer, K values, fused rounds): the targets.
CASES = ([("resnet18", "layer4", [4], 1)] if TINY else
         [("resnet18", "layer4", [256], 3), ("resnet50", "layer4", [256], 3),
          ("vgg16", "features.29", [16, 64], 1), ("densenet121", "features", [64], 3),
          ("mobilenet_v3_large", "features", [64], 3), ("efficientnet_b0", "features", [64], 3),
          ("convnext_tiny", "features", [64], 3)])
ROWS = []


def _median_time(fn, rounds):
    fn()  # warm: the fx split, the head plan, allocator
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _captum_time(model, layer, x, K):
    try:
        import captum.attr as captum
    except ImportError:  # a benchmark-only peer (make bench installs it)
        return None
    cam = ShapCAM(model, layer, K=K)
    A, extras = cam.split.trunk(x)
    h, w = A.shape[-2:]
    head = cam.split.head
    mask = torch.arange(h * w).reshape(1, 1, h, w)

    def forward(feats):
        return torch.softmax(head(feats, extras), 1)

    svs = captum.ShapleyValueSampling(forward)
    return _median_time(lambda: svs.attribute(A, target=1, feature_mask=mask, n_samples=K,
                                              perturbations_per_eval=64), 1)


@pytest.mark.parametrize("name,layer,Ks,rounds", CASES, ids=[c[0] for c in CASES])
def bench_incremental(benchmark, name, layer, Ks, rounds):
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None).eval()
    x = torch.rand(1, 3, 224 if not TINY else 64, 224 if not TINY else 64)
    gradcam = GradCAM(model, layer)
    g = _median_time(lambda: gradcam.explain(x, targets=[1]), 3)
    for K in Ks:
        inc = ShapCAM(model, layer, K=K)
        fused = ShapCAM(model, layer, K=K, incremental=False)
        res = inc.explain(x, targets=[1])
        t_inc = _median_time(lambda: inc.explain(x, targets=[1]), 3)
        t_fused = _median_time(lambda: fused.explain(x, targets=[1]), rounds)
        ref = fused.explain(x, targets=[1])
        agree = float((res.values - ref.values).abs().max())
        row = {"model": name, "K": K, "path": res.path, "incremental_s": t_inc, "fused_s": t_fused,
               "gradcam_s": g, "fused/incremental": t_fused / t_inc, "incremental/gradcam": t_inc / g,
               "max |incremental - fused|": agree}
        if name.startswith("resnet") and not TINY:
            t_cap = _captum_time(model, layer, x, 64)
            if K == 256 and t_cap is not None:
                t64 = _median_time(lambda: ShapCAM(model, layer, K=64).explain(x, targets=[1]), 3)
                row.update(captum_K64_s=t_cap, incremental_K64_s=t64, **{"captum/incremental at K=64": t_cap / t64})
        ROWS.append(row)
    benchmark.pedantic(lambda: ShapCAM(model, layer, K=Ks[-1]).explain(x, targets=[1]), rounds=1,
                       iterations=1)
    benchmark.extra_info.update(group=f"incremental {name}", rows=[r for r in ROWS if r["model"] == name])


def bench_zz_incremental_table(benchmark):
    """Prints the side-by-side table of the rows above (seconds per image, ratios)."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    lines = ["| model | K | path | incremental s | fused s | fused / incremental | Grad-CAM s | "
             "incremental / Grad-CAM | captum / incremental (K=64) | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ROWS:
        cap = r.get("captum/incremental at K=64")
        lines.append(f"| {r['model']} | {r['K']} | {r['path']} | {r['incremental_s']:.4f} | "
                     f"{r['fused_s']:.3f} | {r['fused/incremental']:.1f}x | {r['gradcam_s']:.4f} | "
                     f"{r['incremental/gradcam']:.2f} | {'' if cap is None else f'{cap:.0f}x'} | "
                     f"{r['max |incremental - fused|']:.1e} |")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update(group="incremental table", table=lines)
