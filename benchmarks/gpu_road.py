"""ROAD on the GPU: the batched conjugate-gradient imputation (metrics.road_impute, solver="cg")
on 16 images of 224x224 at 9 percentiles (144 systems), against the host's sparse LU in the same
run; prints one Markdown row. Run by benchmarks/gpu_check.sh."""
import time

import torch
import torch.nn.functional as F

from shapcam import metrics


def main():
    g = torch.Generator().manual_seed(0)
    N, S = 16, 224
    images = torch.rand((N, 3, S, S), generator=g)
    maps = F.interpolate(torch.rand((N, 1, 7, 7), generator=g), size=(S, S), mode="bilinear",
                         align_corners=False)[:, 0]
    keep = metrics.road_keep_masks(maps).reshape(-1, S, S)
    reps = images.repeat_interleave(9, 0)
    dev = reps.cuda()
    metrics.road_impute(dev[:9], keep[:9].cuda(), noise=0.0)  # warm
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu = metrics.road_impute(dev, keep.cuda(), noise=0.0)
    torch.cuda.synchronize()
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu = metrics.road_impute(reps, keep, noise=0.0, solver="direct")
    t_cpu = time.perf_counter() - t0
    diff = float((gpu.cpu() - cpu).abs().max())
    print("| ROAD imputation, 144 systems of 224x224 | GPU cg s | host LU s | host / GPU | max abs diff |")
    print("|---|---|---|---|---|")
    print(f"| {torch.cuda.get_device_name()} | {t_gpu:.3f} | {t_cpu:.2f} | {t_cpu / t_gpu:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
