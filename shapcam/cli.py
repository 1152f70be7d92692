"""The `shapcam` command.

    shapcam demo [--out DIR] [--n 6] [--K 64]          # the bundled model on held-out images
    shapcam explain IMAGE... [--model digits|NAME|FILE] [--layer L] [--method shapcam,gradcam]
                             [--target C] [--out DIR]
    shapcam evaluate [--data bundled|DIR|voc:IMAGES:ANN] [--methods ...] [--limit N] [--out DIR]
    shapcam info                                        # which engine runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ._progress import progress_bar

METHOD_NAMES = ("shapcam", "gradcam", "gradcam++", "scorecam")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _methods(spec: str):
    names = list(METHOD_NAMES) if spec == "all" else [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in METHOD_NAMES]
    if bad or not names:
        raise SystemExit(f"--method: unknown {bad or spec!r}; choose from {', '.join(METHOD_NAMES)} or all")
    return names


def make_cam(name, model, layer, args):
    from . import cam

    if name == "shapcam":
        return cam.ShapCAM(model, layer, K=args.K, seed=args.seed, batch_size=args.batch_size)
    if name == "scorecam":
        return cam.ScoreCAM(model, layer)
    return cam.METHODS[name](model, layer)


def default_layer(model, example):
    """The module that finishes last with a spatial (h*w > 1) 4-D output, called once: for a
    ResNet `layer4`, for the bundled model `features`."""
    import torch

    seen, order = {}, []
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            seen[name] = seen.get(name, 0) + 1
            if torch.is_tensor(out) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append(name)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name in reversed(order):
        if seen[name] == 1:
            return name
    raise SystemExit("--layer: could not find a convolutional layer; name one")


def load_model(spec: str, arch: str | None, pretrained: bool, device):
    """(model, input spec) for 'digits', a torchvision name, or a TorchScript / torch.save file."""
    import torch

    from .models import digits

    if spec == "digits":
        return digits.load_model(device=device), {"channels": 1, "size": 64, "mean": None, "std": None}
    imagenet = {"channels": 3, "size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if os.path.exists(spec):
        try:
            model = torch.jit.load(spec, map_location=device)
        except (RuntimeError, ValueError):
            obj = torch.load(spec, map_location=device, weights_only=False)
            if isinstance(obj, torch.nn.Module):
                model = obj
            elif isinstance(obj, dict):
                if not arch:
                    raise SystemExit(f"--model {spec}: a state dict needs --arch (digits or a torchvision name)")
                model, info = load_model(arch, None, False, device)
                model.load_state_dict(obj)
                return model.eval(), info
            else:
                raise SystemExit(f"--model {spec}: neither TorchScript, a module nor a state dict")
        return model.eval().to(device), imagenet
    try:
        import torchvision
    except ImportError:
        raise SystemExit(f"--model {spec}: not a file, and torchvision is not installed") from None
    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        raise SystemExit(f"--model {spec!r}: not 'digits', a file, or a torchvision model "
                         f"({', '.join(n for n in names if n[:3] in ('res', 'vgg', 'den', 'mob'))}, ...)")
    if not pretrained:
        print(f"note: {spec} with random weights (pass --pretrained for torchvision's weights, "
              "which are downloaded once)", file=sys.stderr)
    model = torchvision.models.get_model(spec, weights="DEFAULT" if pretrained else None)
    return model.eval().to(device), imagenet


def load_images(paths, info, device):
    import torch
    from PIL import Image

    out = []
    for p in paths:
        try:
            im = Image.open(p)
            im = im.convert("L" if info["channels"] == 1 else "RGB").resize((info["size"], info["size"]),
                                                                            Image.BILINEAR)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{p}: cannot read image ({exc})") from None
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
        out.append(a)
    x = torch.from_numpy(np.stack(out)).to(device)
    raw = x.clone()
    if info["mean"] is not None:
        mean = torch.tensor(info["mean"], device=device)[:, None, None]
        std = torch.tensor(info["std"], device=device)[:, None, None]
        x = (x - mean) / std
    return x, raw


def _run_methods(model, layer, x, targets, names, args, progress=True):
    results = {}
    bar = progress_bar(len(names), bool(progress), desc="methods", unit="method")
    for m in names:
        results[m] = make_cam(m, model, layer, args).explain(x, targets=targets)
        bar.set_postfix_str(m)
        bar.update(1)
    bar.close()
    return results


def cmd_explain(args) -> int:
    import torch

    from . import viz

    device = torch.device(args.device)
    model, info = load_model(args.model, args.arch, args.pretrained, device)
    x, raw = load_images(args.images, info, device)
    layer = args.layer or default_layer(model, x[:1])
    names = _methods(args.method)
    targets = None if args.target is None else [args.target] * len(x)
    results = _run_methods(model, layer, x, targets, names, args)
    os.makedirs(args.out, exist_ok=True)
    summary = []
    for i, path in enumerate(args.images):
        stem = os.path.splitext(os.path.basename(path))[0]
        for m, r in results.items():
            viz.save_overlay(raw[i], r.maps[i], os.path.join(args.out, f"{stem}_{m}.png"))
        summary.append({"image": path, "target": int(results[names[0]].targets[i, 0]),
                        "probability": float(results[names[0]].scores[i, 0]),
                        **{f"seconds_{m}": r.seconds / len(x) for m, r in results.items()}})
        if "shapcam" in results:
            summary[-1]["efficiency_residual"] = float(results["shapcam"].efficiency_residual[i, 0])
    viz.grid(raw, {m: r.maps for m, r in results.items()}, os.path.join(args.out, "grid.png"), scale=max(1, 128 // raw.shape[-1]))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"model": args.model, "layer": layer, "results": summary}, f, indent=2)
    print(f"layer {layer}; wrote {len(summary) * len(results) + 1} PNGs and results.json to {args.out}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from . import engine_info, viz
    from .models import digits

    torch.manual_seed(0)
    model = digits.load_model()
    data = digits.load_heldout()
    n = min(args.n, len(data["labels"]))
    x = digits.to_tensor(data["images"][:n])
    names = list(METHOD_NAMES)
    results = _run_methods(model, digits.TARGET_LAYER, x, None, names, args)
    os.makedirs(args.out, exist_ok=True)
    path = viz.grid(x, {m: r.maps for m, r in results.items()}, os.path.join(args.out, "demo_grid.png"),
                    scale=2, boxes=data["boxes"][:n],
                    row_labels=[f"true {data['labels'][i]}" for i in range(n)])
    sc = results["shapcam"]
    print(f"shapcam demo: the bundled digits CNN ({digits.TARGET_LAYER}: 64 players), {n} held-out "
          f"images, Shap-CAM K={args.K} (engine: {engine_info()['default_engine']})")
    print(f"{'image':>5} {'true':>4} {'pred':>4} {'conf':>6} {'eff. residual':>13}")
    for i in range(n):
        print(f"{i:>5} {data['labels'][i]:>4} {int(sc.targets[i, 0]):>4} {float(sc.scores[i, 0]):>6.3f} "
              f"{float(sc.efficiency_residual[i, 0]):>13.1e}")
    print(f"{'method':<10} {'ms / image':>10}")
    for m, r in results.items():
        print(f"{m:<10} {r.seconds / n * 1e3:>10.1f}")
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="shapcam", description="Shapley values and Shap-CAM saliency maps")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--K", type=int, default=64, help="Shap-CAM permutations per image (default 64)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=None, help="coalitions per head call")

    demo = sub.add_parser("demo", help="explain held-out images of the bundled model with all four methods")
    demo.add_argument("--n", type=int, default=6, help="images (default 6)")
    demo.add_argument("--out", default="shapcam-demo", help="output folder (default ./shapcam-demo)")
    common(demo)
    ex = sub.add_parser("explain", help="saliency maps for image files")
    ex.add_argument("images", nargs="+")
    ex.add_argument("--model", default="digits", help="digits (bundled), a torchvision name, or a model file")
    ex.add_argument("--arch", default=None, help="architecture for a state-dict file")
    ex.add_argument("--pretrained", action="store_true", help="torchvision's pretrained weights")
    ex.add_argument("--layer", default=None, help="target layer (default: the last conv block)")
    ex.add_argument("--method", default="shapcam", help="comma list of " + ", ".join(METHOD_NAMES) + ", or all")
    ex.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--out", default="shapcam-out")
    common(ex)
    ev = sub.add_parser("evaluate", help="the paper's recognition and localization metrics over a dataset "
                                         "(torchrun --nproc_per_node N ... shards images)")
    ev.add_argument("--model", default="digits")
    ev.add_argument("--arch", default=None)
    ev.add_argument("--pretrained", action="store_true")
    ev.add_argument("--layer", default=None)
    ev.add_argument("--data", default="bundled", help="bundled, an image folder, or voc:IMAGES:ANNOTATIONS")
    ev.add_argument("--classes", default=None, help="class names, one per line (for voc:)")
    ev.add_argument("--methods", default="gradcam,gradcam++,scorecam,shapcam")
    # not --n: torchrun's own parser would take it for an abbreviation of its --nnodes
    ev.add_argument("--limit", dest="n", type=int, default=None, help="evaluate the first N images")
    ev.add_argument("--keep", type=float, default=0.5,
                    help="fraction of highest-saliency pixels kept for Average Drop (default 0.5; 1 = all)")
    ev.add_argument("--deletion", action="store_true", help="also RISE deletion / insertion AUC")
    ev.add_argument("--steps", type=int, default=32, help="deletion / insertion steps")
    ev.add_argument("--no-resume", dest="resume", action="store_false", help="recompute finished images")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default="shapcam-eval")
    common(ev)
    sub.add_parser("info", help="print which engine shapcam runs on")
    args = parser.parse_args(argv)
    if args.cmd == "evaluate":
        from .evaluate import run

        return run(args)
    if args.cmd == "demo":
        return cmd_demo(args)
    if args.cmd == "explain":
        return cmd_explain(args)
    from . import engine_info

    print(json.dumps(engine_info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
