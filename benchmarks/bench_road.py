"""ROAD (MoRF, 9 percentiles, noise 0.01) on 16 images of 224x224, ours against pytorch-grad-cam's
ROADMostRelevantFirstAverage, side by side in one run, on the same model, maps and targets.

The model is a small CNN (one strided convolution, pooling, a linear layer) so that the row
measures the metric — the imputation's linear systems — rather than a forward pass both pay
alike; the row also times the imputation alone. pytorch-grad-cam solves one system per (image,
percentile) with scipy's default spsolve after building it with a lil_matrix; ours builds every
system with NumPy index arithmetic and factors it in a nested-dissection order (metrics.road_impute),
in this process or (workers=2) on two spawned processes.

    pytest benchmarks/bench_road.py          # SHAPCAM_BENCH_TINY=1: 2 images of 32x32
"""
import time

import pytest

from conftest import TINY

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from shapcam import metrics  # noqa: E402

N, SIZE = (2, 32) if TINY else (16, 224)


def _setup():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10)).eval()
    images = torch.rand((N, 3, SIZE, SIZE), generator=g)
    maps = F.interpolate(torch.rand((N, 1, 7, 7), generator=g), size=(SIZE, SIZE),
                         mode="bilinear", align_corners=False)[:, 0]
    return model, images, maps, [3] * N


def bench_road_vs_pytorch_grad_cam(benchmark):
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, images, maps, targets = _setup()
    t0 = time.perf_counter()
    ours = metrics.road(model, images, maps, targets, order="morf")
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    two = metrics.road(model, images, maps, targets, order="morf", workers=2)
    t_two = time.perf_counter() - t0
    assert torch.equal(ours, two)
    keep = metrics.road_keep_masks(maps).reshape(-1, SIZE, SIZE)
    reps = images.repeat_interleave(keep.shape[0] // N, 0)
    t0 = time.perf_counter()
    metrics.road_impute(reps, keep)
    t_imp = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = road_mod.ROADMostRelevantFirstAverage()(
        images, maps.numpy(), [ClassifierOutputSoftmaxTarget(t) for t in targets], model)
    t_theirs = time.perf_counter() - t0
    # their imputer alone on the same systems
    imp = road_mod.NoisyLinearImputer()
    t0 = time.perf_counter()
    for i in range(keep.shape[0]):
        imp(reps[i], keep[i].float())
    t_their_imp = time.perf_counter() - t0
    diff = float((ours - torch.as_tensor(theirs, dtype=torch.float64)).abs().max())
    row = (f"| ROAD MoRF, {N} images {SIZE}x{SIZE}, 9 percentiles | {t_ours:.2f} s | "
           f"{t_two:.2f} s | {t_theirs:.2f} s | {t_theirs / t_ours:.1f}x | "
           f"{t_theirs / t_two:.1f}x | imputation alone: {t_imp:.2f} s vs {t_their_imp:.2f} s, "
           f"{t_their_imp / t_imp:.1f}x | {diff:.3f} |")
    print("\n| what | shapcam | shapcam, workers=2 | pytorch-grad-cam | speed-up | speed-up, "
          "workers=2 | | max abs diff (noise 0.01 each) |\n|---|---|---|---|---|---|---|---|\n" + row)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group="road", ours_s=t_ours, ours_2_workers_s=t_two, theirs_s=t_theirs,
                                imputation_s=t_imp, their_imputation_s=t_their_imp, row=row)
