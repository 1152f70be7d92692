"""The paper's evaluation metrics (§4.1-4.2) and RISE's deletion / insertion, batched and
device-aware: torch tensors in, numbers out.

Choices where the paper is vague (each a parameter):
- Average Drop / Increase in Confidence multiply the image by its saliency map after keeping only
  the ``keep`` fraction of pixels with the highest saliency (the paper "limits the number of
  positive pixels" without a number; default 0.5: the explanation may keep at most half the image,
  so a map that lights everything cannot keep the confidence for free). ``keep=None`` uses the
  whole map.
- Where Y = 0 the drop is 0 (nothing to lose); it still counts in the mean.
- The pointing game's proportion is 0 for an all-zero map (it points nowhere).
"""
from __future__ import annotations

import torch

from ._arrays import is_real_number


def _check_maps(images, maps):
    if images.dim() != 4:
        raise ValueError(f"images: expected [N, C, H, W], got {tuple(images.shape)}")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[2:]:
        raise ValueError(f"maps: expected [N, H, W] = [{images.shape[0]}, {images.shape[2]}, "
                         f"{images.shape[3]}], got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps: contain NaN or inf")


def limit_positive(maps: torch.Tensor, keep: float | None) -> torch.Tensor:
    """Zero all but the ``keep`` fraction of each map's pixels with the highest values (ties at the
    threshold kept); keep=None returns the maps. maps: [N, H, W]."""
    if keep is None:
        return maps
    if not 0 < keep <= 1:
        raise ValueError(f"keep: expected a fraction in (0, 1], got {keep}")
    flat = maps.flatten(1)
    k = max(1, int(round(keep * flat.shape[1])))
    thresh = flat.topk(k, dim=1).values[:, -1:]
    return torch.where(flat >= thresh, flat, torch.zeros_like(flat)).view_as(maps)


@torch.no_grad()
def target_probabilities(model, images, targets, batch_size=64) -> torch.Tensor:
    """Softmax probability of targets[i] for images[i]: [N] float64."""
    return target_scores(model, images, targets, "probability", batch_size)


def average_drop_increase(model, images, maps, targets, *, keep: float | None = 0.5,
                          batch_size=64) -> dict:
    """Average Drop % and Increase in Confidence % (Chattopadhay et al. 2018; the paper's §4.1).

    images [N, C, H, W] (as the model takes them), maps [N, H, W] in [0, 1], targets [N].
    Returns {"average_drop", "increase_in_confidence"} (percent) and the per-image "drop" [N],
    "increase" [N] (bool), "Y" and "O" [N].
    """
    _check_maps(images, maps)
    targets = torch.as_tensor(targets, dtype=torch.long)
    masked = images * limit_positive(maps, keep).to(images.dtype)[:, None]
    Y = target_probabilities(model, images, targets, batch_size)
    O = target_probabilities(model, masked, targets, batch_size)
    drop = torch.where(Y > 0, torch.clamp(Y - O, min=0) / torch.where(Y > 0, Y, torch.ones_like(Y)),
                       torch.zeros_like(Y))
    inc = Y < O
    return {"average_drop": float(drop.mean() * 100), "increase_in_confidence": float(inc.double().mean() * 100),
            "drop": drop.cpu(), "increase": inc.cpu(), "Y": Y.cpu(), "O": O.cpu()}


def box_mask(boxes, height: int, width: int) -> torch.Tensor:
    """Union of boxes (x0, y0, x1, y1; pixel edges, end exclusive, clipped to the image) as a
    [H, W] bool mask."""
    m = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(width, int(x1)), min(height, int(y1))
        if x1 > x0 and y1 > y0:
            m[y0:y1, x0:x1] = True
    return m


def energy_pointing_game(maps: torch.Tensor, boxes) -> torch.Tensor:
    """Energy-based pointing game (Score-CAM; the paper's §4.2): the share of each saliency map's
    energy inside its object box(es). maps [N, H, W] (non-negative), boxes: per image a list of
    (x0, y0, x1, y1). Returns [N] proportions in [0, 1] (0 for an all-zero map)."""
    if maps.dim() != 3:
        raise ValueError(f"maps: expected [N, H, W], got {tuple(maps.shape)}")
    if len(boxes) != maps.shape[0]:
        raise ValueError(f"boxes: expected one list per map ({maps.shape[0]}), got {len(boxes)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps: contain NaN or inf")
    if (maps < 0).any():
        raise ValueError("maps: the energy game needs non-negative maps")
    H, W = maps.shape[1:]
    out = torch.zeros(maps.shape[0], dtype=torch.float64)
    for i, bs in enumerate(boxes):
        bs = [bs] if len(bs) == 4 and not hasattr(bs[0], "__len__") else bs
        inside = box_mask(bs, H, W).to(maps.device)
        total = maps[i].double().sum()
        out[i] = (maps[i].double()[inside].sum() / total).item() if total > 0 else 0.0
    return out


@torch.no_grad()
def deletion_insertion(model, images, maps, targets, *, steps: int = 32, baseline: float = 0.0,
                       batch_size=64) -> dict:
    """RISE's deletion and insertion AUCs (Petsiuk et al. 2018).

    Pixels are ranked by saliency (highest first). Deletion replaces them with ``baseline``
    step by step, insertion adds them to an all-``baseline`` image; each curve is the target's
    probability at steps+1 points (0, 1/steps, ..., 1 of the pixels), and its AUC the trapezoid
    mean; steps is capped at H * W (more would repeat points), and the curve's images are made
    batch_size at a time. Returns {"deletion", "insertion"} (means over images) and per-image
    arrays.
    """
    _check_maps(images, maps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int (points on each curve: steps + 1), got {steps!r}")
    targets = torch.as_tensor(targets, dtype=torch.long)
    N, C, H, W = images.shape
    # More steps than pixels only repeats points of the curve: at most H * W steps, and the
    # curve's images made batch_size at a time (never all steps + 1 at once).
    steps = min(steps, H * W)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    order = maps.flatten(1).argsort(1, descending=True)  # [N, HW]
    fracs = torch.linspace(0, 1, steps + 1)
    counts = (fracs * H * W).round().long()
    dele, ins = [], []
    for i in range(N):
        rank = torch.empty(H * W, dtype=torch.long, device=order.device)
        rank[order[i]] = torch.arange(H * W, device=order.device)
        img = images[i:i + 1]
        base = torch.full_like(img, baseline)
        pd, ps = [], []
        for a in range(0, steps + 1, batch_size):
            c = counts[a:a + batch_size].to(rank.device)
            shown = (rank[None, :] < c[:, None]).view(-1, 1, H, W)  # the first c pixels
            t = targets[i].repeat(shown.shape[0])
            pd.append(target_probabilities(model, torch.where(shown, base, img), t, batch_size))
            ps.append(target_probabilities(model, torch.where(shown, img, base), t, batch_size))
        pd, ps = torch.cat(pd), torch.cat(ps)  # deletion: ranked pixels removed; insertion: added
        dele.append(torch.trapezoid(pd, fracs.to(pd).to(pd.device)).item())
        ins.append(torch.trapezoid(ps, fracs.to(ps).to(ps.device)).item())
    dele, ins = torch.tensor(dele, dtype=torch.float64), torch.tensor(ins, dtype=torch.float64)
    return {"deletion": float(dele.mean()), "insertion": float(ins.mean()), "deletion_auc": dele,
            "insertion_auc": ins}


# --- ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022) ------------

from ._imputation import ROAD_NEIGHBOURS  # noqa: E402 - the stencil, re-exported

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road_keep_masks(maps, percentiles=ROAD_PERCENTILES, order: str = "morf", seed: int = 0):
    """[N, P, H, W] bool: the pixels ROAD keeps for each map [N, H, W] and percentile p, as
    pytorch-grad-cam defines them. "morf" (most relevant first removed) keeps the pixels below
    the map's p-th percentile (p% of the image kept); "lerf" keeps those below the p-th
    percentile of 1 - map (the p% most relevant kept). Computed in float32 NumPy, as theirs.

    Ties: theirs keeps only the pixels strictly below the percentile, which is none where more
    than p% of the map ties at its minimum (a ReLU'd map's zeros, a constant map: a singular
    system); there, and only there, a seeded random round(p%) of the tied pixels is kept.
    Elsewhere the masks are exactly theirs."""
    import numpy as np

    if order not in ("morf", "lerf"):
        raise ValueError(f"order: expected 'morf' or 'lerf', got {order!r}")
    m = maps.detach().float().cpu().numpy()
    if order == "lerf":
        m = 1 - m
    out = np.empty((m.shape[0], len(percentiles)) + m.shape[1:], dtype=bool)
    size = m[0].size
    for i in range(m.shape[0]):
        for j, p in enumerate(percentiles):
            thr = np.percentile(m[i], p)
            keep = m[i] < thr
            tied = np.flatnonzero(m[i].ravel() == thr)
            want = min(size - 1, max(1, int(round(p / 100 * size))))
            have = int(keep.sum())
            if have == 0:  # all tied at the bottom: theirs would impute from nothing
                rng = np.random.default_rng([int(seed) % 2**63, i, j])
                flat = keep.ravel()
                flat[rng.permutation(tied)[:want - have]] = True
                keep = flat.reshape(keep.shape)
            out[i, j] = keep
    return torch.from_numpy(out)


def _solve_cg(keep, images, tol=1e-7, max_iter=None):
    """Batched conjugate gradients on the device: keep [B, H, W] bool, images [B, C, H, W] ->
    the imputed images [B, C, H, W] (float64). The same system as _imputation.imputation_system, applied as
    an 8-point stencil on whole images (zero at kept pixels), Jacobi-preconditioned, until every
    system's residual is at most tol times its right side (or max_iter: 4 (H + W) by default)."""
    import torch.nn.functional as F

    B, C, H, W = images.shape
    x0 = images.double()
    rem = (~keep).to(x0.dtype)[:, None]  # [B, 1, H, W]: 1 at unknowns
    ones = F.pad(torch.ones((1, 1, H, W), dtype=x0.dtype, device=x0.device), (1, 1, 1, 1))

    def shifted(t, dr, dc):  # t[..., i + dr, j + dc], zero outside the image
        p = F.pad(t, (1, 1, 1, 1))
        return p[..., 1 + dr:1 + dr + H, 1 + dc:1 + dc + W]

    diag = sum(w * ones[..., 1 + dr:1 + dr + H, 1 + dc:1 + dc + W] for dr, dc, w in ROAD_NEIGHBOURS)
    known = x0 * (1 - rem)
    b = rem * sum(w * shifted(known, dr, dc) for dr, dc, w in ROAD_NEIGHBOURS)

    def apply(x):  # x is zero at kept pixels
        return rem * (diag * x - sum(w * shifted(x, dr, dc) for dr, dc, w in ROAD_NEIGHBOURS))

    inv = rem / diag
    x = torch.zeros_like(b)
    res = b.clone()
    z = inv * res
    p = z.clone()
    rz = (res * z).flatten(1).sum(1)
    bnorm = b.flatten(1).norm(dim=1).clamp_min(1e-300)
    for _ in range(max_iter or 4 * (H + W)):
        if bool(((res.flatten(1).norm(dim=1) / bnorm) <= tol).all()):
            break
        Ap = apply(p)
        alpha = rz / (p * Ap).flatten(1).sum(1).clamp_min(1e-300)
        x += alpha[:, None, None, None] * p
        res -= alpha[:, None, None, None] * Ap
        z = inv * res
        rz_new = (res * z).flatten(1).sum(1)
        p = z + (rz_new / rz.clamp_min(1e-300))[:, None, None, None] * p
        rz = rz_new
    return known + rem * x


def road_impute(images, keep, *, noise: float = 0.01, seed: int = 0, solver: str = "auto",
                workers: int = 1):
    """Noisy linear imputation (ROAD): images [B, C, H, W] with the pixels where keep [B, H, W]
    is False replaced by the solution of the linear system that makes each the weighted mean of
    its in-image neighbours (ROAD_NEIGHBOURS), plus Gaussian noise of sd ``noise`` (absolute,
    seeded). solver: "direct" (a sparse LU per image, on the host), "cg" (batched
    conjugate gradients on the images' device, to a relative residual of 1e-7), "auto" (cg on a
    GPU, direct elsewhere). workers: processes for the direct solver (2 on a 2-core machine
    nearly halves its time; spawned, so a script that uses them needs the usual
    ``if __name__ == "__main__":`` guard). Returns [B, C, H, W] in the images' dtype and device."""
    if images.dim() != 4 or keep.shape != (images.shape[0],) + tuple(images.shape[2:]):
        raise ValueError(f"images [B, C, H, W] and keep [B, H, W]: got {tuple(images.shape)} and "
                         f"{tuple(keep.shape)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive int, got {workers!r}")
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver: expected 'auto', 'direct' or 'cg', got {solver!r}")
    if not (is_real_number(noise) and 0 <= noise < float("inf")):
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    keep = keep.to(torch.bool)
    if bool((keep.flatten(1).sum(1) == 0).any()):
        raise ValueError("keep: an image keeps no pixel; there is nothing to impute from")
    if solver == "auto":
        solver = "cg" if images.is_cuda else "direct"
    B, C, H, W = images.shape
    if solver == "cg":
        out = _solve_cg(keep.to(images.device), images)
    else:
        from ._imputation import solve_many

        imgs = images.detach().double().cpu().numpy()
        kp = keep.cpu().numpy()
        out_np = imgs.copy().reshape(B, C, H * W)
        for i, (x, removed) in enumerate(solve_many(list(kp), list(imgs), workers)):
            out_np[i][:, removed] = x.T
        out = torch.from_numpy(out_np.reshape(B, C, H, W)).to(images.device)
    if noise:
        g = torch.Generator(device="cpu").manual_seed(int(seed) % 2**63)
        eps = torch.randn((B, C, H, W), generator=g, dtype=torch.float64).to(out.device)
        out = out + noise * eps * (~keep).to(out.dtype)[:, None].to(out.device)
    return out.to(images.dtype)


def target_scores(model, images, targets, score="probability", batch_size=64) -> torch.Tensor:
    """[N] float64: targets[i]'s softmax probability (or logit) on images[i], batch_size images
    per forward pass."""
    from .cam.base import check_logits

    out = []
    for s in range(0, images.shape[0], batch_size):
        logits = model(images[s:s + batch_size])
        check_logits(logits)
        z = logits.double()
        z = torch.softmax(z, 1) if score == "probability" else z
        out.append(z.gather(1, targets[s:s + batch_size, None].to(z.device))[:, 0])
    return torch.cat(out)


@torch.no_grad()
def road(model, images, maps, targets, *, order: str = "morf",
         percentiles=ROAD_PERCENTILES, noise: float = 0.01, score: str = "probability",
         seed: int = 0, solver: str = "auto", workers: int = 1,
         batch_size: int = 64) -> torch.Tensor:
    """ROAD (Rong et al., ICML 2022): per image, the mean over ``percentiles`` of (the target's
    score after imputation - its score on the image). For each percentile p the image keeps p%
    of its pixels — below the map's p-th percentile for ``order="morf"`` (most relevant removed
    first: lower is better), the p% most relevant for ``"lerf"`` (least relevant removed first:
    higher is better) — and the rest is imputed by noisy linear imputation (road_impute), as
    pytorch-grad-cam's ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage define it
    (with noise=0 the imputed images are theirs, up to the solver's rounding).

    images [N, C, H, W] as the model takes them; maps [N, H, W]; targets [N]; score:
    "probability" or "logit" (theirs with ClassifierOutputTarget). All (image, percentile)
    imputations are solved as one batch (solver, workers: as for road_impute). Returns [N]
    float64."""
    from .cam.base import check_score

    _check_maps(images, maps)
    check_score(score)
    percentiles = tuple(percentiles)
    if not percentiles or not all(is_real_number(p) and 0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles: expected numbers in (0, 100), got {percentiles!r}")
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    N, C, H, W = images.shape
    if targets.shape[0] != N:
        raise ValueError(f"targets: expected one class per image ({N}), got {targets.shape[0]}")
    P = len(percentiles)
    keep = road_keep_masks(maps, percentiles, order, seed=seed).reshape(N * P, H, W)
    reps = images.repeat_interleave(P, 0)
    imputed = road_impute(reps, keep, noise=noise, seed=seed, solver=solver, workers=workers)
    before = target_scores(model, images, targets, score, batch_size)
    after = target_scores(model, imputed, targets.repeat_interleave(P), score, batch_size)
    return (after.view(N, P) - before[:, None]).mean(1)


def road_combined(model, images, maps, targets, **kw) -> torch.Tensor:
    """(ROAD LeRF - ROAD MoRF) / 2 per image [N] (pytorch-grad-cam's ROADCombined): higher is
    better. Keywords as for road (not order)."""
    if "order" in kw:
        raise TypeError("road_combined: order is both; pass the other keywords of road")
    lerf = road(model, images, maps, targets, order="lerf", **kw)
    morf = road(model, images, maps, targets, order="morf", **kw)
    return (lerf - morf) / 2


# --- sanity checks: model-parameter randomization (Adebayo et al., NeurIPS 2018) ----------------

def parameter_layers(model) -> list:
    """The model's layers that hold parameters of their own (convolutions, linear layers,
    normalisations), named, from the output back to the input (the order of the test)."""
    return [name for name, m in model.named_modules()
            if name and any(True for _ in m.parameters(recurse=False))][::-1]


def _randomize(module, seed):
    """Re-initialise a layer's own parameters: its reset_parameters where it has one (the
    framework's initialisation: Kaiming for convolutions and linear layers), else N(0, sd of the
    parameter). Normalisation layers' affine parameters get N(1, 0.1) and N(0, 0.1), as a reset to
    the identity would not randomise them. Seeded: the same seed, the same weights."""
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
                     nn.InstanceNorm2d)
            if isinstance(module, norms):
                for name, p in module.named_parameters(recurse=False):
                    p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name == "weight" else 0.0))
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                for p in module.parameters(recurse=False):
                    p.copy_(torch.randn_like(p) * float(p.detach().float().std().nan_to_num(0.02)))


def randomized_copy(model, names, seed: int = 0):
    """A copy of model with the layers ``names`` (parameter_layers' names) re-initialised,
    layer k of the list with seed + k, as the cascading randomization test leaves them: the
    model itself is not modified."""
    import copy

    out = copy.deepcopy(model)
    for k, name in enumerate(names):
        _randomize(out.get_submodule(name), seed + k)
    return out


def spearman(a, b) -> torch.Tensor:
    """Spearman's rank correlation per row of a, b [N, D] (ties get their mean rank): [N]
    float64; NaN for a constant row."""
    import numpy as np
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.detach().double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().double().cpu().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.norm(dim=1) * rb.norm(dim=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300),
                           torch.full_like(den, float("nan")))


def randomization_test(make_cam, model, images, targets, *, layers="cascade", seed: int = 0,
                       max_layers: int | None = None, progress=None) -> dict:
    """The model-parameter randomization test (Adebayo et al., "Sanity checks for saliency maps",
    NeurIPS 2018): a map that depends on what the model learnt must change when its weights are
    randomised. Returns {layer name: [N] float64 Spearman rank correlation between each image's
    map from the trained model and from the randomised one}, layers from the top (the classifier)
    down — ``layers="cascade"``: that layer and every layer above it randomised;
    ``"independent"``: that layer alone. Values near 1 mean the map ignores those weights.

    make_cam: ``make_cam(model) -> a CAM`` (anything with ``explain(images, targets)`` returning
    maps [N, H, W]), called on a copy of the model for each randomisation: ``model`` itself is
    never modified. targets: as for the CAM's explain (fixed to the trained model's classes, so
    both maps explain the same class). max_layers: test only the top this many layers. Seeded:
    layer k of the list gets seed + k."""
    import copy

    from ._progress import progress_bar

    if layers not in ("cascade", "independent"):
        raise ValueError(f"layers: expected 'cascade' or 'independent', got {layers!r}")
    names = parameter_layers(model)
    if not names:
        raise ValueError("model: has no layer with parameters to randomise")
    if max_layers is not None:
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
            raise ValueError(f"max_layers: expected a positive int or None, got {max_layers!r}")
        names = names[:max_layers]

    def maps_of(m):
        cam = make_cam(m)
        out = cam.explain(images, targets=targets).maps
        return out.reshape(out.shape[0], -1).detach()

    reference = maps_of(copy.deepcopy(model))
    out = {}
    work = copy.deepcopy(model) if layers == "cascade" else None
    bar = progress_bar(len(names), progress, desc="randomization", unit="layer")
    try:
        for k, name in enumerate(names):
            if layers == "cascade":  # one copy, randomised further down at each step
                _randomize(work.get_submodule(name), seed + k)
                target = work
            else:
                target = copy.deepcopy(model)
                _randomize(target.get_submodule(name), seed + k)
            out[name] = spearman(reference, maps_of(target))
            bar.update(1)
    finally:
        bar.close()
    return out
