"""Shap-CAM: the Shapley value of each position of the target layer's feature map (the paper's
Eq. 4), estimated by permutation sampling (Eq. 5-6) on the fused masked-input game."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .._progress import progress_bar
from ..estimator import estimate_shapley
from ..games import MaskedInputGame
from .base import BaseCAM, check_score


class ShapCAM(BaseCAM):
    """Shap-CAM saliency maps.

    Players are the h*w positions of the feature map A [C, h, w]; coalition S keeps A at S (all
    channels) and puts ``baseline`` elsewhere; the value of a coalition is the target's softmax
    probability (``score="probability"``, the paper) or logit (``score="logit"``) from the rest of
    the network — the head, which is all that runs per coalition: the trunk runs once per image.

    Args:
        model, target_layer: as for every CAM (module or dotted name).
        K: permutations per image (each costs h*w - 1 head evaluations).
        seed: the permutations; the same for every image, so an image's map does not depend on
            the batch it came in.
        baseline: value of the removed positions (default 0, the paper's).
        score: "probability" (default, the paper's Y^c) or "logit": what a coalition's value is
            (the same option the Grad-CAM family and Score-CAM take). ``value=`` is its deprecated
            spelling.
        batch_size: coalitions per head call. Default on a GPU: 1 GB of masked features. On the
            CPU: about 24 MB of masked features (measured best for memory-bound heads such as
            ResNet's pool + fc: ResNet-18 K=64 131 -> 43 ms), or more when the head's weights are
            larger than that, so each call amortises streaming them (VGG's 480 MB classifier), up
            to 256 MB.
        antithetic: pair each permutation with its reverse.
        engine: "native" / "reference" / None (best built).
        progress: a tqdm bar over images (None: when several images on a terminal).
    """

    name = "shapcam"

    def __init__(self, model, target_layer, K: int = 64, *, seed: int = 0, baseline: float = 0.0,
                 score: str = "probability", batch_size=None, antithetic: bool = True,
                 engine=None, split: str = "auto", progress=None, value: str | None = None):
        super().__init__(model, target_layer, split=split)
        if value is not None:
            warnings.warn("ShapCAM(value=...) is deprecated; use score=...", DeprecationWarning,
                          stacklevel=2)
            score = value
        self.score = check_score(score)
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
            raise ValueError(f"K: expected a positive int, got {K!r}")
        self.K, self.seed, self.baseline = int(K), seed, baseline
        self.batch_size, self.antithetic, self.engine, self.progress = batch_size, antithetic, engine, progress

    def _default_batch(self, A):
        if A.is_cuda:
            return None  # the game's default: 1 GB of masked features
        head = self.split.head_module
        params = sum(p.numel() * p.element_size() for p in head.parameters()) if head is not None else 0
        return _default_batch_cpu(A[0].numel() * A.element_size(), params)

    def _cams(self, images, A, extras, targets):
        N, C, h, w = A.shape
        players = torch.arange(h * w).reshape(h, w)
        batch_size = self.batch_size or self._default_batch(A)
        maps, ses, gaps = [], [], []
        n_evals = 0
        workspace = None  # one buffer of masked features for all images
        bar = progress_bar(N, self.progress, desc="shap-cam", unit="image")
        for i in range(N):
            ex_i = [e[i:i + 1] if torch.is_tensor(e) and e.dim() > 0 and e.shape[0] == N else e
                    for e in extras]
            t_i = targets[i]

            @torch.no_grad()
            def value_fn(feats, ex_i=ex_i, t_i=t_i):
                # feats is the game's workspace, rewritten for every chunk: the head may modify it.
                out = self.split.head(feats.to(A.dtype), ex_i, inplace_ok=True)
                if self.score == "probability":
                    out = torch.softmax(out.double(), 1)
                return out[:, t_i]  # [B, m]

            # Half-precision models (float16, bfloat16): the engines mask float32 features, and the
            # head gets them back in its dtype.
            feats_i = A[i].float() if A.dtype in (torch.float16, torch.bfloat16) else A[i]
            game = MaskedInputGame(value_fn, feats_i, baseline=self.baseline, players=players,
                                   workspace=workspace)
            res = estimate_shapley(game, K=self.K, seed=self.seed, antithetic=self.antithetic,
                                   batch_size=batch_size, engine=self.engine, progress=False)
            workspace = game.workspace
            maps.append(torch.as_tensor(res.values).T.reshape(-1, h, w))
            ses.append(torch.as_tensor(res.stderr).T.reshape(-1, h, w))
            gaps.append(torch.as_tensor(res.efficiency_gap).reshape(-1))
            n_evals += res.n_evals
            bar.update(1)
        bar.close()
        return torch.stack(maps).to(A.device), {"stderr": torch.stack(ses).cpu(),
                                                "efficiency_gap": torch.stack(gaps).cpu(),
                                                "n_evals": n_evals}


CPU_BATCH_BYTES = 24 * 2**20
CPU_BATCH_MAX_BYTES = 256 * 2**20


def _default_batch_cpu(per_eval_bytes, head_param_bytes):
    want = max(CPU_BATCH_BYTES, head_param_bytes)
    return int(max(1, min(want, CPU_BATCH_MAX_BYTES) // max(per_eval_bytes, 1)))
