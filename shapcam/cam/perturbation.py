"""The paper's black-box baselines (Table 1): RISE (Petsiuk, Das & Saenko 2018) and the
meaningful-perturbation mask (Fong & Vedaldi 2017, the paper's "Mask"). They need no target
layer: they only run the whole model on perturbed images. Same interface as every CAM:
``cam(images, targets)`` -> maps [N, H, W] in [0, 1], ``cam.explain(...)`` -> CAMResult (values:
the raw saliency at input size)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._arrays import is_real_number
from .._progress import progress_bar
from .base import BaseCAM, check_score


class _BlackBoxCAM(BaseCAM):
    """A method that perturbs the input and runs the whole model: no layer, no split."""

    def __init__(self, model: nn.Module, target_layer=None, *, score: str = "probability"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer_name, self.layer = None, None  # target_layer is accepted and unused
        self._split_method, self._split = None, None
        self.score = check_score(score)

    def _scores(self, images, targets):
        """The explained score of targets [B, m] on images [B, C, H, W] -> [B, m] float64."""
        out = self.model(images)
        if self.score == "probability":
            out = torch.softmax(out.double(), 1)
        return out.gather(1, targets).double()

    def _explain_batch(self, images, targets):
        with torch.no_grad():
            logits = self.model(images)
        tgt, multi = self._resolve_targets(targets, logits)
        scores = torch.softmax(logits.double(), 1).gather(1, tgt)
        sal, fields = self._saliency(images, tgt)
        return sal, tgt, multi, scores, fields

    def _saliency(self, images, targets):
        raise NotImplementedError


def _check_int(v, name, lowest=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        raise ValueError(f"{name}: expected an int >= {lowest}, got {v!r}")
    return int(v)


class RISE(_BlackBoxCAM):
    """RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

    N random masks: a ``cells`` x ``cells`` grid whose cells are kept with probability ``p``,
    upsampled bilinearly to (cells + 1) x cell size and cropped at a random shift to the image;
    the saliency of class c is sum_i score_c(image * M_i) * M_i / (N * p). Defaults are the
    reference code's for 224x224 ImageNet models (N = 4000, s = 7, p = 0.5, probability score).

    Args:
        model: any classifier taking [N, C, H, W]; target_layer: accepted for a common interface
            with the CAMs, unused.
        n_masks, cells, p: N, s and the keep probability.
        batch_size: masked images per forward pass (the maps do not depend on it).
        seed: the masks are a pure function of (seed, mask index, image size).
        score: "probability" (the reference's) or "logit".
        progress: a tqdm bar over the masked forward passes.
    """

    name = "rise"

    def __init__(self, model, target_layer=None, *, n_masks: int = 4000, cells: int = 7,
                 p: float = 0.5, batch_size: int = 100, seed: int = 0, score: str = "probability",
                 progress=None):
        super().__init__(model, target_layer, score=score)
        self.n_masks = _check_int(n_masks, "n_masks")
        self.cells = _check_int(cells, "cells")
        if not (is_real_number(p) and 0 < p <= 1):
            raise ValueError(f"p: expected a keep probability in (0, 1], got {p!r}")
        self.p = float(p)
        self.batch_size = _check_int(batch_size, "batch_size")
        from .. import ops

        self.seed = ops.check_seed(seed)
        self.progress = progress
        self._grids = None

    def _grid_and_shifts(self):
        """The N binary grids [N, s, s] and crop shifts [N, 2] in [0, 1): drawn once per seed."""
        if self._grids is None:
            g = torch.Generator().manual_seed(self.seed % 2**63)
            grids = (torch.rand((self.n_masks, self.cells, self.cells), generator=g) < self.p)
            shifts = torch.rand((self.n_masks, 2), generator=g, dtype=torch.float64)
            self._grids = (grids.float(), shifts)
        return self._grids

    def masks(self, start: int, stop: int, height: int, width: int, device="cpu", dtype=torch.float32):
        """Masks [start, stop) for an image of height x width: [B, 1, H, W] in [0, 1]."""
        grids, shifts = self._grid_and_shifts()
        s = self.cells
        ch, cw = math.ceil(height / s), math.ceil(width / s)
        up = F.interpolate(grids[start:stop, None], size=((s + 1) * ch, (s + 1) * cw),
                           mode="bilinear", align_corners=False)
        out = torch.empty((stop - start, 1, height, width))
        for b in range(stop - start):
            dy = int(shifts[start + b, 0] * ch)
            dx = int(shifts[start + b, 1] * cw)
            out[b] = up[b, :, dy:dy + height, dx:dx + width]
        return out.to(device=device, dtype=dtype)

    @torch.no_grad()
    def _saliency(self, images, targets):
        N, _, H, W = images.shape
        m = targets.shape[1]
        sal = torch.zeros((N, m, H, W), dtype=torch.float64, device=images.device)
        bar = progress_bar(N * self.n_masks, self.progress, desc="rise", unit="mask", auto_min=20000)
        try:
            for b0 in range(0, self.n_masks, self.batch_size):
                b1 = min(self.n_masks, b0 + self.batch_size)
                M = self.masks(b0, b1, H, W, images.device, images.dtype)   # [B, 1, H, W]
                for i in range(N):
                    t = targets[i:i + 1].expand(b1 - b0, -1)
                    sc = self._scores(images[i:i + 1] * M, t)             # [B, m]
                    sal[i] += torch.einsum("bm,bhw->mhw", sc, M[:, 0].double())
                    bar.update(b1 - b0)
        finally:
            bar.close()
        return sal / (self.n_masks * self.p), {"n_evals": N * self.n_masks}


def _gaussian_blur(images, sigma, kernel):
    """Separable Gaussian blur of [N, C, H, W] (reflect padding)."""
    x = torch.arange(kernel, dtype=images.dtype, device=images.device) - (kernel - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    C = images.shape[1]
    pad = kernel // 2
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(C, 1, 1, kernel), groups=C)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(C, 1, kernel, 1), groups=C)


class MeaningfulPerturbation(_BlackBoxCAM):
    """The meaningful-perturbation mask (Fong & Vedaldi, ICCV 2017; the paper's "Mask").

    A low-resolution mask m (1 = keep) is optimised with Adam so that the image blended with its
    blurred copy, x * up(m) + blur(x) * (1 - up(m)) (+ small noise), loses the target's score,
    under an L1 penalty on the deleted area and a total-variation penalty on the mask:
    loss = l1 * mean|1 - m| + tv * TV_beta(m) + score. The saliency is 1 - up(m). Defaults follow
    the PyTorch reference port of the method (jacobgil/pytorch-explain-black-box): 28x28 mask for
    224x224 inputs (input size / 8), blur sigma 5 (kernel 11), Adam lr 0.1, 500 iterations,
    l1 = 0.01, tv = 0.2, beta = 3, noise sd 0.2 — scaled to the input size where sizes matter,
    and the noise to the input's own statistics: the reference's 0.2 is in units of ImageNet-
    normalised inputs, whose channels have sd ~1, so here it is 0.2 times each image's own
    per-channel sd (on [0, 1] pixels an absolute 0.2 would be ~4x stronger than the method's).

    Args:
        model, target_layer: as for RISE (the layer is unused).
        iterations, lr, l1, tv, tv_beta: the optimisation above.
        noise: sd of the added Gaussian noise, relative to the image's per-channel sd.
        mask_scale: input size / mask size (8 -> 28x28 for 224x224).
        seed: the noise sequence (the same for every image, so a map does not depend on the
            batch it came in).
        score: "probability" (default) or "logit".
    """

    name = "mask"

    def __init__(self, model, target_layer=None, *, iterations: int = 500, lr: float = 0.1,
                 l1: float = 0.01, tv: float = 0.2, tv_beta: float = 3.0, noise: float = 0.2,
                 mask_scale: int = 8, blur_sigma: float = 5.0, seed: int = 0,
                 score: str = "probability", progress=None):
        super().__init__(model, target_layer, score=score)
        self.iterations = _check_int(iterations, "iterations")
        self.mask_scale = _check_int(mask_scale, "mask_scale")
        for name, v in (("lr", lr), ("l1", l1), ("tv", tv), ("tv_beta", tv_beta), ("noise", noise),
                        ("blur_sigma", blur_sigma)):
            if not is_real_number(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
        self.lr, self.l1, self.tv, self.tv_beta, self.noise = map(float, (lr, l1, tv, tv_beta, noise))
        self.blur_sigma = float(blur_sigma)
        from .. import ops

        self.seed = ops.check_seed(seed)
        self.progress = progress

    def _saliency(self, images, targets):
        N, C, H, W = images.shape
        m = targets.shape[1]
        h, w = max(1, H // self.mask_scale), max(1, W // self.mask_scale)
        kernel = min(2 * int(round(2 * self.blur_sigma * min(H, W) / 224)) + 1, 2 * (min(H, W) // 2) - 1)
        sigma = max(self.blur_sigma * min(H, W) / 224, 1e-3)
        x = images.detach()
        with torch.no_grad():
            blurred = _gaussian_blur(x, sigma, max(kernel, 1)) if kernel >= 3 else x.clone()
        # One mask per (image, target), optimised together: every loss term is a sum over
        # (image, target) pairs of that pair's own loss, so each mask's gradient is its own.
        xs = x.repeat_interleave(m, 0)
        bs = blurred.repeat_interleave(m, 0)
        # the noise in the image's own units: its per-channel sd (the reference's sd 0.2 is for
        # ImageNet-normalised inputs, sd ~1); a constant channel gets none
        sd = xs.std(dim=(2, 3), keepdim=True) * self.noise
        ts = targets.reshape(-1, 1)
        mask = torch.ones((N * m, 1, h, w), dtype=x.dtype, device=x.device, requires_grad=True)
        opt = torch.optim.Adam([mask], lr=self.lr)
        g = torch.Generator(device="cpu").manual_seed(self.seed % 2**63)
        bar = progress_bar(self.iterations, self.progress, desc="mask", unit="step", auto_min=50)
        try:
            with torch.enable_grad():
                for _ in range(self.iterations):
                    up = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=False)
                    noise = torch.randn((1, C, H, W), generator=g).to(x) * sd
                    perturbed = xs * up + bs * (1 - up) + noise
                    score = self._scores(perturbed, ts)[:, 0]
                    dy = (mask[..., 1:, :] - mask[..., :-1, :]).abs().pow(self.tv_beta)
                    dx = (mask[..., :, 1:] - mask[..., :, :-1]).abs().pow(self.tv_beta)
                    per = (self.l1 * (1 - mask).abs().flatten(1).mean(1)
                           + self.tv * (dy.flatten(1).mean(1) + dx.flatten(1).mean(1)) + score)
                    opt.zero_grad()
                    per.sum().backward()
                    opt.step()
                    with torch.no_grad():
                        mask.clamp_(0, 1)
                    bar.update(1)
        finally:
            bar.close()
        with torch.no_grad():
            up = F.interpolate(mask.detach(), size=(H, W), mode="bilinear", align_corners=False)
            sal = (1 - up).reshape(N, m, H, W).double()
        return sal, {"n_evals": N * m * self.iterations}
