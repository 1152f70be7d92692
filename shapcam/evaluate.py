"""The paper's evaluation protocol over a dataset: recognition (Average Drop, Increase in
Confidence; optionally RISE deletion/insertion) and localization (energy-based pointing game),
per image and method, resumable, and sharded across processes under torchrun.

Datasets (``--data``):
- ``bundled``: the held-out digit canvases shipped with shapcam (true classes and boxes);
- a folder of images (ImageFolder layout or flat): recognition only, target = predicted class;
- ``voc:IMAGES:ANNOTATIONS`` with ``--classes FILE``: ImageNet/VOC-style images with Pascal-VOC XML
  boxes (the ILSVRC2012 val and VOC 2007 format). The paper's localization filter keeps images with
  exactly one box of the target class covering under 50% of the image; preprocessing is 224x224
  and the ImageNet mean/std.

Each image is explained alone (batch of one), so its numbers do not depend on how images are
batched or sharded: a 2-process run equals a 1-process run exactly.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from ._progress import progress_bar

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
METRIC_LABELS = [("average_drop", "Average Drop (%) ↓"), ("increase_in_confidence", "Increase in Confidence (%) ↑"),
                 ("proportion", "Energy pointing game (%) ↑"), ("deletion", "Deletion AUC ↓"),
                 ("insertion", "Insertion AUC ↑"), ("road_morf", "ROAD MoRF ↓"),
                 ("road_lerf", "ROAD LeRF ↑"), ("road_combined", "ROAD combined ↑"),
                 ("sanity_top", "Randomization ρ, classifier ↓"),
                 ("sanity_all", "Randomization ρ, all layers ↓"),
                 ("sign_resolved", "Positions with |φ| > 2 SE (%)"),
                 ("seed_stability", "Rank ρ between two seeds ↑")]
# Metrics on a scale of about 1 (AUCs, score differences, correlations): three decimals.
FINE_METRICS = {"deletion", "insertion", "road_morf", "road_lerf", "road_combined", "sanity_top",
                "sanity_all", "seed_stability"}


@dataclass
class Item:
    id: str
    load: object  # () -> (image tensor [C, H, W] as the model takes it, raw [C, H, W] in [0, 1])
    target: int | None  # None: the predicted class
    boxes: list = field(default_factory=list)  # [(x0, y0, x1, y1)] in model-input pixels


@dataclass
class Dataset:
    items: list
    has_boxes: bool
    skipped: dict = field(default_factory=dict)  # reason -> count


def bundled_dataset(n=None) -> Dataset:
    from .models import digits

    data = digits.load_heldout()
    x = digits.to_tensor(data["images"])
    N = len(x) if n is None else min(n, len(x))
    items = [Item(f"digits-{i:04d}", (lambda i=i: (x[i], x[i])), int(data["labels"][i]),
                  [tuple(int(v) for v in data["boxes"][i])]) for i in range(N)]
    return Dataset(items, True)


def _image_loader(path, spec):
    def load():
        from .loading import read_image

        return read_image(path, spec)

    return load


def image_files(root) -> list:
    """The image files under root, sorted. Paths are taken as paths (brackets, stars and
    question marks are characters, not patterns); a symlinked folder is followed once, and a
    folder reached again (a link loop, or two links to one folder) is not listed again."""
    found, seen = [], set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [os.path.join(top, f) for f in files if f.lower().endswith(IMAGE_EXT)]
    return sorted(found)


def folder_dataset(root, info, n=None) -> Dataset:
    if not os.path.isdir(root):
        raise ValueError(f"--data {root}: not a folder")
    paths = image_files(root)
    if not paths:
        raise ValueError(f"--data {root}: no images ({', '.join(IMAGE_EXT)})")
    paths = paths[:n] if n else paths
    items = [Item(os.path.relpath(p, root), _image_loader(p, info), None) for p in paths]
    return Dataset(items, False)


def parse_voc(xml_path):
    """(filename, (width, height), [(name, (x0, y0, x1, y1))]) from a Pascal-VOC XML file; boxes are
    1-based inclusive in VOC and returned as 0-based, end-exclusive pixel edges."""
    try:
        root = ET.parse(xml_path).getroot()
        fname = root.findtext("filename")
        w, h = int(root.find("size").findtext("width")), int(root.find("size").findtext("height"))
        objs = []
        for o in root.iter("object"):
            b = o.find("bndbox")
            x0, y0 = float(b.findtext("xmin")) - 1, float(b.findtext("ymin")) - 1
            x1, y1 = float(b.findtext("xmax")), float(b.findtext("ymax"))
            if not all(map(math.isfinite, (x0, y0, x1, y1))):
                raise ValueError(f"a box of {o.findtext('name')!r} has a coordinate that is not "
                                 f"a finite number")
            objs.append((o.findtext("name").strip(), (x0, y0, x1, y1)))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{xml_path}: malformed Pascal-VOC XML ({type(exc).__name__}: {exc})") from None
    if not fname or w <= 0 or h <= 0:
        raise ValueError(f"{xml_path}: malformed Pascal-VOC XML (no filename or size)")
    return fname, (w, h), objs


def voc_dataset(images_dir, ann_dir, classes_file, info, n=None, max_area=0.5) -> Dataset:
    if not classes_file:
        raise ValueError("--data voc:...: needs --classes FILE (one class name per line, line i = class i)")
    with open(classes_file) as f:
        names = [line.strip().split()[0] for line in f if line.strip()]
    index = {c: i for i, c in enumerate(names)}
    items, skipped = [], {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for what, folder in (("IMAGES", images_dir), ("ANNOTATIONS", ann_dir)):
        if not os.path.isdir(folder):
            raise ValueError(f"--data voc:IMAGES:ANNOTATIONS: {what} {folder!r} is not a folder")
    # paths as paths: a folder or file name with brackets or stars is not a pattern
    images = {f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXT)}
    by_stem = {}
    for f in sorted(images):
        by_stem.setdefault(os.path.splitext(f)[0], f)
    for xml_name in sorted(f for f in os.listdir(ann_dir) if f.lower().endswith(".xml")):
        xml_path = os.path.join(ann_dir, xml_name)
        try:
            fname, (w, h), objs = parse_voc(xml_path)
        except ValueError:
            skip("malformed XML")
            continue
        if os.path.basename(fname) != fname or fname in (".", "..") or "\\" in fname:
            # ../x.png or /etc/x.png would read outside IMAGES
            skip("image name with a folder in it")
            continue
        if fname in images:
            img_path = os.path.join(images_dir, fname)
        else:  # the image of the annotation's own name (its stem exactly), whatever its extension
            other = by_stem.get(os.path.splitext(xml_name)[0])
            if other is None:
                skip("image missing")
                continue
            img_path = os.path.join(images_dir, other)
        known = [(nm, b) for nm, b in objs if nm in index]
        if not known:
            skip("no box of a known class")
            continue
        cls = known[0][0]
        boxes = [b for nm, b in known if nm == cls]
        x0, y0, x1, y1 = boxes[0]
        if len(boxes) != 1 or len({nm for nm, _ in known}) != 1:
            skip("not exactly one box of the target class")
            continue
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 <= x0 or y1 <= y0:
            skip("box outside the image")
            continue
        if (x1 - x0) * (y1 - y0) >= max_area * w * h:
            skip(f"object covers {int(max_area * 100)}% of the image or more")
            continue
        s = info.size
        box = (math.floor(x0 * s / w), math.floor(y0 * s / h), math.ceil(x1 * s / w), math.ceil(y1 * s / h))
        items.append(Item(os.path.basename(img_path), _image_loader(img_path, info), index[cls], [box]))
        if n and len(items) >= n:
            break
    if not items:
        raise ValueError(f"--data voc: no usable image (skipped: {skipped})")
    return Dataset(items, True, skipped)


# --- the runner ---------------------------------------------------------------------------------

def record_files(out_dir) -> list:
    """The per-image record files in out_dir (per_image.jsonl, per_image.rankR.jsonl), by name,
    not by pattern (out_dir may hold brackets or stars). One that is not a file is an error."""
    paths = [os.path.join(out_dir, f) for f in sorted(os.listdir(out_dir))
             if f.startswith("per_image") and f.endswith(".jsonl")]
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"--out {out_dir}: {os.path.basename(p)} is not a file; remove it or "
                             f"choose another --out")
    return paths


def _read_done(out_dir, run_id):
    """Records of this run already written (any rank's file). A torn line (a crash mid-write), a
    line that is JSON but not a record, and records of another run (other settings) are ignored."""
    done = {}
    for path in record_files(out_dir):
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not (isinstance(rec, dict) and isinstance(rec.get("id"), str)
                        and isinstance(rec.get("method"), str) and rec.get("run") == run_id):
                    continue
                done[(rec["id"], rec["method"])] = rec
    return done


RUN_FILE = "run.json"
# What changes a record's numbers: a resumed run must have the same (batch sizes and --limit do not).
SCORE_NOTE = ("each method's own (probability: Shap-CAM, RISE, Mask; logit: Grad-CAM, "
              "Grad-CAM++, Score-CAM)")
SETTING_KEYS = ("model", "arch", "pretrained", "layer", "data", "classes", "keep", "deletion",
                "steps", "K", "seed", "score", "rise_masks", "mask_steps", "sampler", "road",
                "sanity")


def run_settings(args, layer) -> dict:
    from .estimator import resolve_sampler

    s = {k: getattr(args, k, None) for k in SETTING_KEYS}
    s["layer"] = layer
    s["sampler"] = resolve_sampler(s["sampler"])[0]  # the name, so a new default is a new run
    return s


def _run_id(settings) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def check_run(out_dir, settings, resume, rank):
    """The run id of these settings. Resuming into a folder whose run.json holds other settings is
    refused (it would mix records and label the table with the last settings); --no-resume starts
    the folder afresh. Rank 0 writes run.json."""
    path = os.path.join(out_dir, RUN_FILE)
    run_id = _run_id(settings)
    old = None
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"--out {out_dir}: {RUN_FILE} is not a file; remove it or choose another --out")
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = None
    if resume and isinstance(old, dict) and old.get("run") != run_id:
        prev = old.get("settings", {}) if isinstance(old.get("settings"), dict) else {}
        diff = [f"{k}: {prev.get(k)!r} -> {settings.get(k)!r}" for k in SETTING_KEYS
                if prev.get(k) != settings.get(k)]
        raise ValueError(f"--out {out_dir} holds a run with other settings ({'; '.join(diff) or 'unknown'}); "
                         "pass --no-resume to start it afresh, or another --out")
    if rank == 0:
        if not resume:
            for p in record_files(out_dir):
                os.remove(p)
        with open(path, "w") as f:
            json.dump({"run": run_id, "settings": settings}, f, indent=2)
    return run_id


def _drop_torn_tail(path):
    """Cut a record torn by a crash mid-write, so the next append starts on a line of its own."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def evaluate_item(model, item, method, cam, keep, deletion, steps, road=False, sanity=None):
    """One image, one method: its record (target, Y, O, Average Drop, Increase in Confidence,
    pointing game when it has boxes, deletion/insertion when asked, efficiency gap, seconds), or
    {"skipped": reason} for an image that cannot be read.

    road: also ROAD MoRF, LeRF and combined (metrics.road: 9 percentiles, noise 0.01, the
    probability). sanity: {"top": the method on the model with its classifier randomised,
    "all": with every layer randomised, "seed": (Shap-CAM) the method with another seed or
    None}: the Spearman correlation of this image's map with each (metrics.randomization_test's
    two ends), and for Shap-CAM the share of positions whose sign its error bars resolve."""
    from . import metrics

    try:
        x, raw = item.load()
    except ValueError as exc:  # a corrupt or unreadable file: counted, not fatal
        return {"id": item.id, "method": method, "skipped": "unreadable image", "error": str(exc)}
    x = x[None].to(next(model.parameters()).device)
    t0 = time.perf_counter()
    res = cam.explain(x, targets=None if item.target is None else [item.target])
    secs = time.perf_counter() - t0
    maps = res.maps.to(x.dtype)
    tgt = res.targets
    rec = {"id": item.id, "method": method, "target": int(tgt[0]), "seconds": secs}
    r = metrics.average_drop_increase(model, x, maps, tgt, keep=keep)
    rec.update(Y=float(r["Y"][0]), O=float(r["O"][0]), average_drop=float(r["drop"][0]) * 100,
               increase_in_confidence=float(r["increase"][0]) * 100)
    if item.boxes:
        rec["proportion"] = float(metrics.energy_pointing_game(maps.cpu(), [item.boxes])[0]) * 100
    if deletion:
        d = metrics.deletion_insertion(model, x, maps, tgt, steps=steps)
        rec.update(deletion=d["deletion"], insertion=d["insertion"])
    if road:
        for order in ("morf", "lerf"):
            rec[f"road_{order}"] = float(metrics.road(model, x, maps, tgt, order=order)[0])
        rec["road_combined"] = (rec["road_lerf"] - rec["road_morf"]) / 2
    if sanity:
        flat = maps.reshape(1, -1)
        t = [int(tgt[0])]
        for key in ("top", "all"):
            other = sanity[key].explain(x, targets=t).maps.to(x.dtype).reshape(1, -1)
            rho = float(metrics.spearman(flat, other)[0])
            # a map that became constant (all zero after ReLU) keeps no ranking: no agreement
            rec[f"sanity_{key}"] = 0.0 if math.isnan(rho) else rho
        if sanity.get("seed") is not None and res.stderr is not None:
            vals, se = res.values.reshape(-1).double(), res.stderr.reshape(-1).double()
            rec["sign_resolved"] = float((vals.abs() > 2 * se).double().mean()) * 100
            again = sanity["seed"].explain(x, targets=t).values.reshape(1, -1)
            rec["seed_stability"] = float(metrics.spearman(vals[None], again)[0])
    if res.efficiency_gap is not None:
        rec["efficiency_gap"] = float(res.efficiency_gap.abs().max())
    return rec


def _first_readable(ds):
    """The first image of the dataset that loads (the default layer is found on it)."""
    for it in ds.items:
        try:
            return it.load()[0]
        except ValueError:
            continue
    raise ValueError("--data: no image could be read")


def summarize(records, methods):
    """{method: {metric: (mean, 95% half-width, n)}} over images (normal approximation)."""
    out = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        out[m] = {}
        for key, _ in METRIC_LABELS:
            vals = np.array([r[key] for r in rows if key in r], dtype=np.float64)
            if len(vals):
                half = 1.96 * vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
                out[m][key] = (float(vals.mean()), float(half), int(len(vals)))
    return out


def paired(records, methods, ref="shapcam"):
    """{method: {metric: (mean of ref - method, 95% half-width, n)}}: the paired comparison of
    `ref` against each other method over the images both were scored on (normal approximation to
    the mean of the per-image differences). Empty when ref is not among the methods."""
    if ref not in methods:
        return {}
    by = {}
    for r in records:
        by.setdefault(r["id"], {})[r["method"]] = r
    out = {}
    for m in methods:
        if m == ref:
            continue
        out[m] = {}
        for key, _ in METRIC_LABELS:
            d = np.array([row[ref][key] - row[m][key] for row in by.values()
                          if ref in row and m in row and key in row[ref] and key in row[m]],
                         dtype=np.float64)
            if len(d):
                half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
                out[m][key] = (float(d.mean()), float(half), int(len(d)))
    return out


def paired_table(diffs, ref="shapcam"):
    """Markdown: ref - method per metric, mean ± 95% half-width over the same images; * where
    the interval excludes 0."""
    methods = list(diffs)
    if not methods:
        return ""
    lines = [f"| {ref} − method | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, label in METRIC_LABELS:
        if not any(key in diffs[m] for m in methods):
            continue
        cells = []
        for m in methods:
            if key not in diffs[m]:
                cells.append("—")
                continue
            mean, half, _n = diffs[m][key]
            digits = 3 if key in FINE_METRICS else 2
            star = "*" if np.isfinite(half) and abs(mean) > half else ""
            cells.append(f"{mean:+.{digits}f} ± {half:.{digits}f}{star}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nPaired over the same images: mean of ({ref} − method) ± 95% half-width; "
                 "* the interval excludes 0. The arrow in the metric says which sign favours "
                 f"{ref}.")
    return "\n".join(lines)


def markdown_table(summary, methods, title=""):
    lines = [title] if title else []
    lines += ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, label in METRIC_LABELS:
        if not any(key in summary[m] for m in methods):
            continue
        cells = []
        for m in methods:
            if key in summary[m]:
                mean, half, n = summary[m][key]
                d = 3 if key in FINE_METRICS else 2
                cells.append(f"{mean:.{d}f} ± {half:.{d}f}")
            else:
                cells.append("—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n = max((v[2] for s in summary.values() for v in s.values()), default=0)
    lines.append(f"\n{n} images; mean ± 95% confidence half-width over images.")
    return "\n".join(lines)


def write_outputs(out_dir, records, methods, header):
    records = sorted(records, key=lambda r: (r["id"], methods.index(r["method"])))
    keys = ["id", "method", "target", "Y", "O", "average_drop", "increase_in_confidence", "proportion",
            "deletion", "insertion", "road_morf", "road_lerf", "road_combined", "sanity_top",
            "sanity_all", "sign_resolved", "seed_stability", "efficiency_gap", "seconds"]
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    summary = summarize(records, methods)
    diffs = paired(records, methods)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"header": header, "summary": summary, "paired_vs_shapcam": diffs}, f, indent=2)
    table = markdown_table(summary, methods, title=header)
    if diffs:
        table += "\n\n" + paired_table(diffs)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    return table


def run(args) -> int:
    """`shapcam evaluate`: see the module docstring."""
    import torch

    from .cam import make_cam, parse_methods
    from .cli import cam_options, output_folder, torch_device
    from .loading import default_layer, load_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch_device(args.device)
    dist = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    methods = parse_methods(args.methods)
    output_folder(args.out)
    model, info = load_model(args.model, args.arch, args.pretrained, device,
                             trust_pickle=args.trust_pickle)
    for p in model.parameters():
        p.requires_grad_(False)
    if args.data == "bundled":
        from .loading import BUNDLED

        if args.model not in BUNDLED:
            raise ValueError(f"--data bundled goes with a bundled model: --model "
                             f"{' or '.join(BUNDLED)}")
        ds = bundled_dataset(args.n)
    elif args.data.startswith("voc:"):
        parts = args.data.split(":")
        if len(parts) != 3:
            raise ValueError("--data voc:IMAGES_DIR:ANNOTATIONS_DIR")
        ds = voc_dataset(parts[1], parts[2], args.classes, info, args.n)
    else:
        ds = folder_dataset(args.data, info, args.n)
    layer = args.layer or default_layer(model, _first_readable(ds)[None].to(device))
    run_id = check_run(args.out, run_settings(args, layer), args.resume, rank)
    if dist is not None:
        dist.barrier()  # run.json written (and old records cleared) before any rank reads
    done = _read_done(args.out, run_id)
    mine = [it for i, it in enumerate(ds.items) if i % world == rank]
    todo = [(it, m) for it in mine for m in methods if (it.id, m) not in done]
    opts = cam_options(args)
    cams = {m: make_cam(m, model, layer, **opts) for m in methods}
    sanity = {}
    if getattr(args, "sanity", False):
        from . import metrics

        names = metrics.parameter_layers(model)
        top = metrics.randomized_copy(model, names[:1], seed=args.seed)
        every = metrics.randomized_copy(model, names, seed=args.seed)
        for m in methods:
            sanity[m] = {"top": make_cam(m, top, layer, **opts),
                         "all": make_cam(m, every, layer, **opts),
                         "seed": make_cam(m, model, layer, **dict(opts, seed=args.seed + 1))
                         if m == "shapcam" else None}
    bar = progress_bar(len(todo) * world, rank == 0 and bool(todo), desc="evaluate", unit="map")
    path = os.path.join(args.out, f"per_image.rank{rank}.jsonl" if world > 1 else "per_image.jsonl")
    _drop_torn_tail(path)
    with open(path, "a") as f:
        for it, m in todo:
            rec = evaluate_item(model, it, m, cams[m], args.keep, args.deletion, args.steps,
                                road=getattr(args, "road", False), sanity=sanity.get(m))
            rec["run"] = run_id
            f.write(json.dumps(rec) + "\n")
            f.flush()
            bar.update(world)
    bar.close()
    if dist is not None:
        dist.barrier()
    if rank == 0:
        ids = {it.id for it in ds.items}
        recs = [r for (i, m), r in _read_done(args.out, run_id).items() if i in ids and m in methods]
        records = [r for r in recs if "skipped" not in r]
        skipped = dict(ds.skipped)
        unreadable = {r["id"] for r in recs if "skipped" in r}
        if unreadable:
            skipped["unreadable image"] = len(unreadable)
        header = (f"shapcam evaluate — model {args.model}, layer {layer}, data {args.data}, "
                  f"{len(ds.items) - len(unreadable)} images" + (f" (skipped: {skipped})" if skipped else "")
                  + f", keep={args.keep}, Shap-CAM K={args.K}"
                  + (f", RISE {args.rise_masks} masks" if getattr(args, "rise_masks", None) else "")
                  + (f", Mask {args.mask_steps} steps" if getattr(args, "mask_steps", None) else "")
                  + f", score={args.score or SCORE_NOTE}")
        table = write_outputs(args.out, records, methods, header)
        print(table)
        print(f"wrote per_image.csv, summary.json, table.md to {args.out}", file=sys.stderr)
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    return 0
