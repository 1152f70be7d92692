"""Score-CAM (Wang et al. 2020): channel weights from the model's score on the input masked by
each upsampled, normalised activation map; batched forward passes."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._progress import progress_bar
from .base import BaseCAM, check_score


class ScoreCAM(BaseCAM):
    """Score-CAM: w = softmax over channels of the target's score on image * norm(up(A_k)).

    score: "logit" (as pytorch-grad-cam) or "probability" (Wang et al.'s confidence).
    batch_size: masked images per forward pass (the maps do not depend on it).
    progress: a tqdm bar over the N * C masked forward passes (None: on a terminal, for long runs).
    """

    name = "scorecam"
    # explain(create_graph=True): the map sum_k w_k A_k is differentiable through A; the channel
    # weights w (softmax of the masked-input scores) are treated as constants.
    supports_create_graph = True

    def __init__(self, model, target_layer, *, score: str = "logit", batch_size: int = 64,
                 split: str = "auto", progress=None, layout: str = "auto"):
        super().__init__(model, target_layer, split=split, layout=layout)
        self.score = check_score(score)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.batch_size, self.progress = int(batch_size), progress

    def _cams(self, images, A, extras, targets):
        cams, fields = self._weighted(images, A.detach(), targets)
        if getattr(self, "_create_graph", False):
            w = fields.pop("weights")  # [N, m, C], constants
            return (w[..., None, None] * A[:, None].to(w.dtype)).sum(2), fields
        fields.pop("weights")
        return cams, fields

    @torch.no_grad()
    def _weighted(self, images, A, targets):
        N, C = A.shape[:2]
        # UpsamplingBilinear2d (align_corners=True), as in the reference implementation. The
        # normalisation runs in float32 at least: its 1e-8 is 0 in float16 (NaN masks).
        work = A.float() if A.dtype in (torch.float16, torch.bfloat16) else A
        up = F.interpolate(work, size=images.shape[-2:], mode="bilinear", align_corners=True)
        flat = up.flatten(2)
        lo, hi = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
        up = ((up - lo) / (hi - lo + 1e-8)).to(images.dtype)
        cams, weights = [], []
        bar = progress_bar(N * C, self.progress, desc="score-cam", unit="mask", auto_min=2048)
        for i in range(N):
            scores = []
            for s in range(0, C, self.batch_size):
                batch = images[i:i + 1] * up[i, s:s + self.batch_size, None]  # [b, ch, H, W]
                out = self.model(batch)
                if self.score == "probability":
                    out = torch.softmax(out, 1)
                scores.append(out[:, targets[i]])  # [b, m]
                bar.update(batch.shape[0])
            w = torch.softmax(torch.cat(scores, 0).T.double(), -1).to(work.dtype)  # [m, C]
            weights.append(w)
            cams.append((w[..., None, None] * work[i, None]).sum(1))
        bar.close()
        return torch.stack(cams), {"n_evals": N * C, "weights": torch.stack(weights)}
