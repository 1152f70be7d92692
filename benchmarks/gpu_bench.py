"""GPU benchmarks of shapcam's CUDA engine (run by benchmarks/gpu_check.sh on a GPU machine).

1. The fused masked-apply kernel's GB/s (bytes written) next to a device-to-device copy of the same
   bytes (counting read + write, like the copy ceiling) and next to the naive torch code.
2. End-to-end Shap-CAM estimates (MaskedInputGame on the GPU) with torchvision VGG16 and ResNet-50
   heads (random weights), K = 8, 32, 64, 128, next to the head-only time for the same evaluations.
Prints a table last and writes JSON to $OUT (or the current directory).
"""
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import shapcam
from shapcam import ops
from shapcam.games import MaskPlan


def cuda_time(fn, warmup=3, reps=15):
    """Median milliseconds of fn() with CUDA events (device work only, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def wall_time(fn, warmup=2, reps=7):
    """Median milliseconds of fn() by host clock, synchronising the device (end-to-end)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def kernel_rows(dev):
    rows = []
    for name, shape, pshape, n in [("vgg16 512x14x14 n=196", (512, 14, 14), (14, 14), 196),
                                   ("resnet50 2048x7x7 n=49", (2048, 7, 7), (7, 7), 49),
                                   ("tabular 30 n=30", (30,), (30,), 30)]:
        x = torch.randn(shape, device=dev)
        players = torch.arange(int(np.prod(pshape))).reshape(pshape)
        per = x.numel() * 4
        B = max(1, (1 << 30) // per)  # 1 GiB of masked output
        out = torch.empty((B,) + shape, device=dev)
        src = torch.randn_like(out)
        plan = MaskPlan.build(x, players, n)
        t_k = cuda_time(lambda: ops.apply_plan(plan, 0, 0, B, True, out=out))
        t_c = cuda_time(lambda: out.copy_(src))
        t_f = cuda_time(lambda: out.fill_(1.5))  # a write-only ceiling
        pl = players.to(dev).expand(shape).reshape(-1).long()

        def naive():
            K = B // (n - 1) + 1
            rank = torch.rand(K, n, device=dev).argsort(1).argsort(1)
            e = torch.arange(B, device=dev)
            k, t = e // (n - 1), e % (n - 1) + 1
            mask = (rank[k] < t[:, None]).to(x.dtype)
            return (x.reshape(-1)[None] * mask[:, pl]).reshape((B,) + shape)

        t_n = cuda_time(naive, warmup=1, reps=5)
        nbytes = out.numel() * 4
        del src
        rows.append(dict(case=name, evals=B, bytes_written=nbytes, kernel_ms=t_k, copy_ms=t_c,
                         naive_ms=t_n, fill_ms=t_f, fill_GBps=nbytes / t_f / 1e6,
                         kernel_GBps=nbytes / t_k / 1e6,
                         copy_GBps_rw=2 * nbytes / t_c / 1e6,
                         kernel_vs_copy=(nbytes / t_k) / (2 * nbytes / t_c)))
        del out
        torch.cuda.empty_cache()
    return rows


def heads(dev):
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval().to(dev)
    vgg_head = torch.nn.Sequential(vgg.features[30], vgg.avgpool, torch.nn.Flatten(), vgg.classifier)
    r50 = torchvision.models.resnet50(weights=None).eval().to(dev)
    r50_head = torch.nn.Sequential(r50.avgpool, torch.nn.Flatten(), r50.fc)
    return [("vgg16", vgg_head, (512, 14, 14)), ("resnet50", r50_head, (2048, 7, 7))]


def e2e_rows(dev, Ks):
    rows = []
    for name, head, shape in heads(dev):
        A = torch.relu(torch.randn(shape, device=dev))
        target = 281
        h, w = shape[1:]

        @torch.no_grad()
        def value(feats):
            return torch.softmax(head(feats), 1)[:, target]

        game = shapcam.MaskedInputGame(value, A, players=torch.arange(h * w).reshape(h, w))
        bs = game.default_batch_size()
        for K in Ks:
            res_holder = {}

            def run():
                res_holder["r"] = shapcam.estimate_shapley(game, K=K, seed=0, sampler="stratified")

            t_e2e = wall_time(run, warmup=1, reps=5)
            r = res_holder["r"]
            E = r.n_evals
            buf = torch.relu(torch.randn((min(bs, E),) + shape, device=dev))

            @torch.no_grad()
            def head_only():
                done = 0
                while done < E:
                    b = min(bs, E - done)
                    torch.softmax(head(buf[:b]), 1)[:, target]
                    done += b

            t_head = wall_time(head_only, warmup=1, reps=5)
            # The engine alone: the same estimate with a value function that reads one number.
            cheap = shapcam.MaskedInputGame(lambda f: f[:, 0, 0, 0].double(), A,
                                            players=torch.arange(h * w).reshape(h, w))
            t_engine = wall_time(lambda: shapcam.estimate_shapley(cheap, K=K, seed=0, sampler="stratified"),
                                 warmup=1, reps=5)
            gap = float((r.values.sum() - (r.v_full - r.v_empty)).abs())
            rows.append(dict(model=name, K=K, evals=E, batch=bs, e2e_ms=t_e2e, head_only_ms=t_head, engine_only_ms=t_engine,
                             ratio=t_e2e / t_head, efficiency_gap=gap))
    return rows


def profile_small(dev, out_dir):
    """Where the fixed cost of a small estimate goes (host side): cProfile of K=8 on a 2048x7x7
    game with a trivial value function, top entries by total time."""
    import cProfile
    import io
    import pstats

    A = torch.randn(2048, 7, 7, device=dev)
    game = shapcam.MaskedInputGame(lambda f: f[:, 0, 0, 0].double(), A,
                                   players=torch.arange(49).reshape(7, 7))
    for _ in range(3):
        shapcam.estimate_shapley(game, K=8, sampler="stratified")
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        shapcam.estimate_shapley(game, K=8, sampler="stratified")
    torch.cuda.synchronize()
    pr.disable()
    # Per-call cost of the two hot ops on tiny inputs (launch + checks), host clock.
    plan = game.plan
    out1 = plan.new_output(1)
    z = lambda *sh: torch.zeros(sh, dtype=torch.float64, device=dev)
    vals, ve, vf, mu, m2 = z(2 * 48, 1), z(1), z(1), z(49, 1), z(49, 1)
    for name, fn in (("apply_plan B=1", lambda: ops.apply_plan(plan, 0, 0, 1, True, out=out1)),
                     ("accumulate S=1", lambda: ops.accumulate(0, 0, 1, 49, True, vals, ve, vf, 0, mu, m2))):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        print(f"per call {name}: {(time.perf_counter() - t) / 200 * 1e6:.1f} us")
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
    text = s.getvalue()
    with open(os.path.join(out_dir, "profile_small.txt"), "w") as f:
        f.write(text)
    print("\n".join(l for l in text.splitlines() if l.strip())[:2500])


def shapcam_rows(dev):
    """shapcam.ShapCAM end to end (trunk, sampling, maps) on one 224x224 image, torchvision models
    with random weights, K = 64."""
    import torchvision

    rows = []
    for name, layer in (("resnet50", "layer4"), ("resnet18", "layer4"), ("vgg16", "features.29")):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval().to(dev)
        x = torch.rand(1, 3, 224, 224, device=dev)
        cam = shapcam.ShapCAM(model, layer, K=64)
        t = wall_time(lambda: cam.explain(x, targets=[281]), warmup=1, reps=5)
        r = cam.explain(x, targets=[281])
        rows.append(dict(model=name, layer=layer, K=64, ms=t, n_evals=r.n_evals,
                         efficiency_gap=float(r.efficiency_gap.abs().max())))
    return rows


def incremental_rows(dev):
    """Issue 12's GPU rows: ResNet-50, K=1024, batches of 1 and 32 images: ms per image for
    ShapCAM incremental, the fused path, and GradCAM, side by side on the same warm machine."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(dev)
    rows = []
    for batch in (1, 32):
        x = torch.rand(batch, 3, 224, 224, device=dev)
        t = [281] * batch
        inc = shapcam.ShapCAM(model, "layer4", K=1024)
        fused = shapcam.ShapCAM(model, "layer4", K=1024, incremental=False)
        grad = shapcam.GradCAM(model, "layer4")
        row = dict(batch=batch, K=1024, path=inc.explain(x[:1], targets=[281]).path)
        for name, cam, reps in (("incremental", inc, 5), ("fused", fused, 2 if batch > 1 else 5),
                                ("gradcam", grad, 5)):
            row[name + "_ms_per_image"] = wall_time(lambda: cam.explain(x, targets=t), warmup=1,
                                                    reps=reps) / batch
        rows.append(row)
    return rows


def sampler_rows(dev, n=30, budget=30 * 1024):
    """Issue 15's GPU rows: estimate_shapley on a game whose values live on the GPU (v = tanh of a
    dot product plus its cube, n = 30), the same number of evaluations for each sampler; and
    ShapCAM on ResNet-50 (random weights, one image) with the permutation and regression designs."""
    import torchvision

    w = torch.linspace(-0.6, 1.0, n, device=dev, dtype=torch.float64)

    def value(m):
        s = torch.as_tensor(m, device=dev).to(torch.float64) @ w
        return torch.tanh(s) + 0.2 * s ** 3

    rows = []
    for sampler in ("plain", "antithetic", "stratified", "regression"):
        run = lambda: shapcam.estimate_shapley(value, n, K=None, max_evals=budget, seed=1,
                                               device="cuda", sampler=sampler)
        ms = wall_time(run, warmup=1, reps=5)
        r = run()
        rows.append(dict(case=f"dot-tanh n={n}", sampler=sampler, evals=r.n_evals, ms=ms,
                         Mevals_per_s=r.n_evals / ms / 1e3))
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(dev)
    x = torch.rand(1, 3, 224, 224, device=dev)
    for sampler in ("stratified", "regression"):
        cam = shapcam.ShapCAM(model, "layer4", K=256, sampler=sampler)
        ms = wall_time(lambda: cam.explain(x, targets=[281]), warmup=1, reps=5)
        r = cam.explain(x, targets=[281])
        rows.append(dict(case="ShapCAM resnet50 K=256", sampler=sampler, evals=r.n_evals, ms=ms,
                         Mevals_per_s=r.n_evals / ms / 1e3))
    return rows


def md_table(rows, cols):
    """Print rows (dicts) as a Markdown table; cols: (header, key, format) per column."""
    print("| " + " | ".join(h for h, _, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[k]) for _, k, f in cols) + " |")


def main():
    dev = torch.device("cuda")
    info = dict(card=torch.cuda.get_device_name(0), torch=torch.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d"),
                engine=shapcam.engine_info())
    quick = "--quick" in sys.argv
    if "--incremental" in sys.argv:  # issue 12's rows alone
        md_table(incremental_rows(dev), [("batch", "batch", "{}"), ("K", "K", "{}"), ("path", "path", "{}"),
                                         ("incremental ms/image", "incremental_ms_per_image", "{:.2f}"),
                                         ("fused ms/image", "fused_ms_per_image", "{:.2f}"),
                                         ("Grad-CAM ms/image", "gradcam_ms_per_image", "{:.2f}")])
        return
    if "--samplers" in sys.argv:  # issue 15's rows alone
        md_table(sampler_rows(dev), [("case", "case", "{}"), ("sampler", "sampler", "{}"),
                                     ("evaluations", "evals", "{}"), ("ms", "ms", "{:.2f}"),
                                     ("M evals/s", "Mevals_per_s", "{:.2f}")])
        return
    if "--shapcam-only" in sys.argv:  # just shapcam.ShapCAM end to end (a short re-check)
        for r in shapcam_rows(dev):
            print(f"| {r['model']} {r['layer']} | K={r['K']} | {r['n_evals']} evals | {r['ms']:.2f} ms | "
                  f"residual {r['efficiency_gap']:.1e} |")
        return
    kr = kernel_rows(dev)
    profile_small(dev, out_dir=os.environ.get("OUT", "."))
    er = e2e_rows(dev, [8, 64] if quick else [8, 32, 64, 128])
    sr = shapcam_rows(dev)
    out_dir = os.environ.get("OUT", ".")
    with open(os.path.join(out_dir, "gpu_bench.json"), "w") as f:
        json.dump(dict(info=info, kernel=kr, e2e=er, shapcam=sr), f, indent=2)
    print(f"\n# {info['card']} — torch {info['torch']} — {info['date']}")
    print("\n| case | evals | fused kernel GB/s (written) | copy GB/s (read+write) | kernel/copy | fill_ GB/s (write-only) | kernel/fill | naive torch time / kernel |")
    print("|---|---|---|---|---|---|---|---|")
    for r in kr:
        print(f"| {r['case']} | {r['evals']} | {r['kernel_GBps']:.0f} | {r['copy_GBps_rw']:.0f} | "
              f"{r['kernel_vs_copy']:.2f} | {r['fill_GBps']:.0f} | {r['kernel_GBps'] / r['fill_GBps']:.2f} | "
              f"{r['naive_ms'] / r['kernel_ms']:.1f}x |")
    print("\n| head | K | evals | batch | end-to-end ms | head-only ms | ratio | engine-only ms | efficiency gap |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in er:
        print(f"| {r['model']} | {r['K']} | {r['evals']} | {r['batch']} | {r['e2e_ms']:.2f} | "
              f"{r['head_only_ms']:.2f} | {r['ratio']:.2f} | {r['engine_only_ms']:.2f} | "
              f"{r['efficiency_gap']:.1e} |")
    print("\n| shapcam.ShapCAM (trunk + sampling + maps), 1 image 224x224 | K | evaluations | ms | efficiency residual |")
    print("|---|---|---|---|---|")
    for r in sr:
        print(f"| {r['model']} {r['layer']} | {r['K']} | {r['n_evals']} | {r['ms']:.2f} | {r['efficiency_gap']:.1e} |")


if __name__ == "__main__":
    main()
