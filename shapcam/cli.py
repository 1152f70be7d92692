"""The `shapcam` command: parses arguments and calls the library (shapcam.loading, shapcam.cam,
shapcam.evaluate); a user error ends in one line on stderr and exit status 2, not a traceback.

    shapcam demo [--out DIR] [--n 6] [--K 64]          # both bundled models on held-out images
    shapcam explain IMAGE... [--model digits|digits-vgg|NAME|FILE] [--layer L]
                             [--method shapcam,gradcam] [--target C] [--out DIR]
    shapcam evaluate [--model digits|digits-vgg|...] [--data bundled|DIR|voc:IMAGES:ANN]
                     [--methods all|...] [--limit N] [--out DIR]
    shapcam distill [--quick] [--seeds 3] [--out DIR]   # the paper's Table 4 (explanations in KD)
    shapcam info                                        # which engine runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._progress import progress_bar


# The demo's methods: the CAM family, seconds in all. RISE (4000 forward passes per image) and the
# optimised mask (500 steps) are one `--method all` away in `explain` and `evaluate`.
DEMO_METHODS = ("shapcam", "gradcam", "gradcam++", "scorecam")
DEFAULT_SCORES = ("each method's default: probability for Shap-CAM, RISE and Mask, logit for the "
                  "Grad-CAM family and Score-CAM")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (not the whole usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class UsageError(Exception):
    """A mistake in the command's arguments or files: reported in one line."""


def _int_at_least(low, what):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def output_folder(path: str) -> str:
    """Create the output folder now (before any work), or fail with one line."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create the folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"--out {path}: not writable")
    return path


def torch_device(spec: str):
    """--device as a torch.device that exists here, or a one-line UsageError."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {spec!r}: not a device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {spec}: torch sees no CUDA device here")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {spec}: torch sees {count} CUDA device"
                             f"{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise UsageError(f"--device {spec}: expected cpu or cuda[:N]")
    else:
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise UsageError(f"--device {spec}: not usable here ({str(exc).splitlines()[0]})") from None
    return dev


def cam_options(args) -> dict:
    """The CAM options the command line sets, for shapcam.cam.make_cam."""
    return {"K": args.K, "seed": args.seed, "batch_size": args.batch_size, "score": args.score,
            "sampler": getattr(args, "sampler", None),
            "n_masks": getattr(args, "rise_masks", None), "iterations": getattr(args, "mask_steps", None)}


def run_methods(model, layer, x, targets, names, options, progress=True):
    """{method: CAMResult} for each method name, one after another, with a bar over methods."""
    from .cam import make_cam

    results = {}
    bar = progress_bar(len(names), bool(progress), desc="methods", unit="method")
    try:
        for m in names:
            results[m] = make_cam(m, model, layer, **options).explain(x, targets=targets)
            bar.set_postfix_str(m)
            bar.update(1)
    finally:
        bar.close()
    return results


def unique_stems(paths):
    """Output file stems, one per input path, made unique: a/x.png and b/x.png give x and x-2."""
    stems, used = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "image"
        n = used.get(stem, 0) + 1
        used[stem] = n
        while n > 1 and f"{stem}-{n}" in used:
            n += 1
        stems.append(stem if n == 1 else f"{stem}-{n}")
        if n > 1:
            used[f"{stem}-{n}"] = 1
    return stems


def cmd_explain(args) -> int:
    from . import viz
    from .cam import parse_methods
    from .loading import default_layer, load_model, read_images

    names = parse_methods(args.method)
    out_dir = output_folder(args.out)
    device = torch_device(args.device)
    model, info = load_model(args.model, args.arch, args.pretrained, device,
                             trust_pickle=args.trust_pickle)
    x, raw = read_images(args.images, info, device)
    layer = args.layer or default_layer(model, x[:1])
    targets = None if args.target is None else [args.target] * len(x)
    results = run_methods(model, layer, x, targets, names, cam_options(args))
    summary, written = [], 0
    for i, (path, stem) in enumerate(zip(args.images, unique_stems(args.images))):
        for m, r in results.items():
            viz.save_overlay(raw[i], r.maps[i], os.path.join(out_dir, f"{stem}_{m}.png"))
            written += 1
        first = results[names[0]]
        summary.append({"image": path, "output_stem": stem, "target": int(first.targets[i]),
                        "paths": {m: r.path for m, r in results.items() if r.path},
                        "probability": float(first.scores[i]),
                        **{f"seconds_{m}": r.seconds / len(x) for m, r in results.items()}})
        if "shapcam" in results:
            summary[-1]["efficiency_gap"] = float(results["shapcam"].efficiency_gap[i])
    viz.grid(raw, {m: r.maps for m, r in results.items()}, os.path.join(out_dir, "grid.png"),
             scale=max(1, 128 // raw.shape[-1]))
    written += 1
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"model": args.model, "layer": layer, "score": args.score, "results": summary},
                  f, indent=2)
    print(f"layer {layer}; wrote {written} PNGs and results.json to {out_dir}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from . import engine_info, viz
    from .models import digits

    out_dir = output_folder(args.out)
    data = digits.load_heldout()
    n = min(args.n, len(data["labels"]))
    x = digits.to_tensor(data["images"][:n])
    names = list(DEMO_METHODS)
    # Both bundled models: the same trunk, two heads. Average pooling + linear is additive over
    # positions (Shapley with the logit = CAM); VGG16's kind of head (max pooling, flatten, two
    # fully connected layers) mixes positions, where Shap-CAM and the gradients part ways.
    for arch, title, grid_name in (("cnn", "digits CNN (average pooling + linear head)", "demo_grid.png"),
                                   ("vgg", "digits-vgg CNN (max pooling + 2 FC head)", "demo_grid_vgg.png")):
        torch.manual_seed(0)
        try:
            model = digits.load_model(arch=arch)
        except FileNotFoundError as exc:
            print(f"(skipping the {title}: {exc})")
            continue
        results = run_methods(model, digits.TARGET_LAYER, x, None, names, cam_options(args))
        path = viz.grid(x, {m: r.maps for m, r in results.items()}, os.path.join(out_dir, grid_name),
                        scale=2, boxes=data["boxes"][:n],
                        row_labels=[f"true {data['labels'][i]}" for i in range(n)])
        sc = results["shapcam"]
        print(f"shapcam demo: the bundled {title}, {digits.TARGET_LAYER}: 64 players, {n} held-out "
              f"images, Shap-CAM K={args.K}, score={args.score or DEFAULT_SCORES} "
              f"(engine: {engine_info()['default_engine']})")
        print(f"{'image':>5} {'true':>4} {'pred':>4} {'conf':>6} {'eff. gap':>9}")
        for i in range(n):
            print(f"{i:>5} {data['labels'][i]:>4} {int(sc.targets[i]):>4} {float(sc.scores[i]):>6.3f} "
                  f"{float(sc.efficiency_gap[i]):>9.1e}")
        print(f"{'method':<10} {'ms / image':>10}  path")
        for m, r in results.items():
            print(f"{m:<10} {r.seconds / n * 1e3:>10.1f}  {r.path or '-'}")
        print(f"wrote {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cam import METHODS

    parser = _Parser(prog="shapcam", description="Shapley values and Shap-CAM saliency maps")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--K", type=positive_int, default=64, help="Shap-CAM permutations per image (default 64)")
        p.add_argument("--seed", type=nonnegative_int, default=0)
        p.add_argument("--sampler", choices=("plain", "antithetic", "stratified", "regression"),
                       default=None, help="Shap-CAM's sampling design (default: stratified)")
        p.add_argument("--batch-size", type=positive_int, default=None,
                       help="inputs per forward pass (Shap-CAM coalitions, Score-CAM masked images)")
        p.add_argument("--rise-masks", type=positive_int, default=None,
                       help="RISE: random masks per image (default 4000, its paper's)")
        p.add_argument("--mask-steps", type=positive_int, default=None,
                       help="Mask (meaningful perturbation): Adam steps per image (default 500)")
        p.add_argument("--score", choices=("probability", "logit"), default=None,
                       help="what every method explains: the target's softmax probability or its "
                            "logit (default: each method's own — probability for Shap-CAM, logit "
                            "for the Grad-CAM family and Score-CAM)")

    def model_args(p):
        p.add_argument("--model", default="digits",
                       help="digits or digits-vgg (bundled), efficientnet-lite0, a torchvision "
                            "name, or a model file (TorchScript or "
                            "a state dict with --arch)")
        p.add_argument("--arch", default=None, help="architecture for a state-dict file")
        p.add_argument("--pretrained", action="store_true", help="torchvision's pretrained weights")
        p.add_argument("--trust-pickle", action="store_true",
                       help="allow a model file that is a whole pickled module: loading it EXECUTES "
                            "CODE from the file; only for files you trust")
        p.add_argument("--layer", default=None, help="target layer (default: the last conv block)")
        p.add_argument("--device", default="cpu")

    demo = sub.add_parser("demo", help="explain held-out images of the bundled model with Shap-CAM, "
                                       "Grad-CAM, Grad-CAM++ and Score-CAM")
    demo.add_argument("--n", type=positive_int, default=6, help="images (default 6)")
    demo.add_argument("--out", default="shapcam-demo", help="output folder (default ./shapcam-demo)")
    common(demo)
    ex = sub.add_parser("explain", help="saliency maps for image files")
    ex.add_argument("images", nargs="+")
    model_args(ex)
    ex.add_argument("--method", default="shapcam", help="comma list of " + ", ".join(METHODS) + ", or all")
    ex.add_argument("--target", type=nonnegative_int, default=None, help="class to explain (default: predicted)")
    ex.add_argument("--out", default="shapcam-out")
    common(ex)
    ev = sub.add_parser("evaluate", help="the paper's recognition and localization metrics over a dataset "
                                         "(torchrun --nproc_per_node N ... shards images)")
    model_args(ev)
    ev.add_argument("--data", default="bundled", help="bundled, an image folder, or voc:IMAGES:ANNOTATIONS")
    ev.add_argument("--classes", default=None, help="class names, one per line (for voc:)")
    ev.add_argument("--methods", default="gradcam,gradcam++,scorecam,shapcam")
    # not --n: torchrun's own parser would take it for an abbreviation of its --nnodes
    ev.add_argument("--limit", dest="n", type=positive_int, default=None, help="evaluate the first N images")
    ev.add_argument("--keep", type=fraction, default=0.5,
                    help="fraction of highest-saliency pixels kept for Average Drop (default 0.5; 1 = all)")
    ev.add_argument("--deletion", action="store_true", help="also RISE deletion / insertion AUC")
    ev.add_argument("--steps", type=positive_int, default=32, help="deletion / insertion steps")
    ev.add_argument("--road", action="store_true",
                    help="also ROAD (Rong et al. 2022): MoRF, LeRF and combined, noisy linear "
                         "imputation at 10..90%% of the pixels kept")
    ev.add_argument("--sanity", action="store_true",
                    help="also the randomization sanity check (Adebayo et al. 2018): each map's "
                         "rank correlation with the map of the model with its classifier, and "
                         "with all its layers, re-initialised; for Shap-CAM the share of positions "
                         "whose sign its error bars resolve and the rank correlation between two "
                         "seeds")
    ev.add_argument("--no-resume", dest="resume", action="store_false", help="recompute finished images")
    ev.add_argument("--out", default="shapcam-eval")
    common(ev)
    sub.add_parser("info", help="print which engine shapcam runs on")
    ds = sub.add_parser("distill", help="knowledge distillation with explanations (the paper's "
                                        "Table 4) on the bundled canvases")
    ds.add_argument("--quick", action="store_true", help="tiny sizes, one seed (checks it runs)")
    ds.add_argument("--seeds", type=positive_int, default=None, help="student seeds (default 3)")
    ds.add_argument("--out", default="shapcam-distill")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.cmd == "evaluate":
            from .evaluate import run

            return run(args)
        if args.cmd == "demo":
            return cmd_demo(args)
        if args.cmd == "distill":
            from .experiments import distill

            distill.run(quick=args.quick, seeds=args.seeds, out=output_folder(args.out))
            return 0
        if args.cmd == "explain":
            return cmd_explain(args)
        from . import engine_info

        print(json.dumps(engine_info(), indent=2))
        return 0
    except (UsageError, ValueError, OSError, ImportError) as exc:
        # User errors (bad layer, target, file, model, a folder where a file should be): one
        # line, no traceback. Set SHAPCAM_DEBUG=1 for the traceback.
        if os.environ.get("SHAPCAM_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"shapcam {args.cmd}: error: {first}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
