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
    from .cam.base import check_logits

    out = []
    for s in range(0, images.shape[0], batch_size):
        logits = model(images[s:s + batch_size])
        check_logits(logits)
        p = torch.softmax(logits.double(), 1)
        out.append(p.gather(1, targets[s:s + batch_size, None].to(p.device))[:, 0])
    return torch.cat(out)


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
