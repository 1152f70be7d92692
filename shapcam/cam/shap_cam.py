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
        antithetic: False: plain permutation sampling (``sampler="plain"``).
        sampler: the sampling design of :func:`~shapcam.estimate_shapley` ("plain",
            "antithetic", "stratified", "regression"); None: "stratified" (the permutation
            designs keep the incremental path's O(d) walk per coalition; "regression" values
            each coalition from scratch, and has no create_graph path).
        incremental: None (default) evaluates coalitions incrementally where the head allows it —
            position-wise ops, then global average pooling / flatten / non-overlapping max pooling
            with a Linear, then any readout (shapcam/cam/incremental.py) — and with the fused
            masked-input path elsewhere; True requires the incremental path (ValueError naming
            the op that blocks it); False always takes the fused path. Both give the same
            estimate for the same seed up to float rounding; with score="logit" and a head whose
            output is the reduction itself (GAP + Linear), the values are exact (stderr 0).
            ``explain(...).path`` says which path ran.
        engine: "native" / "reference" / None (best built).
        progress: a tqdm bar over images (None: when several images on a terminal).
    """

    name = "shapcam"
    supports_create_graph = True  # on the incremental path

    def __init__(self, model, target_layer, K: int = 64, *, seed: int = 0, baseline: float = 0.0,
                 score: str = "probability", batch_size=None, antithetic: bool = True,
                 engine=None, split: str = "auto", progress=None, value: str | None = None,
                 incremental=None, sampler=None, layout: str = "auto"):
        super().__init__(model, target_layer, split=split, layout=layout)
        if incremental not in (None, True, False):
            raise ValueError(f"incremental: expected None, True or False, got {incremental!r}")
        self.incremental = incremental
        self._plans = {}
        if value is not None:
            warnings.warn("ShapCAM(value=...) is deprecated; use score=...", DeprecationWarning,
                          stacklevel=2)
            score = value
        self.score = check_score(score)
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
            raise ValueError(f"K: expected a positive int, got {K!r}")
        self.K, self.seed, self.baseline = int(K), seed, baseline
        from ..estimator import resolve_sampler

        self.sampler, self._group = resolve_sampler(sampler, antithetic)
        self.antithetic = self._group != 1
        self.batch_size, self.engine, self.progress = batch_size, engine, progress

    def _default_batch(self, A):
        if A.is_cuda:
            return None  # the game's default: 1 GB of masked features
        head = self.split.head_module
        params = sum(p.numel() * p.element_size() for p in head.parameters()) if head is not None else 0
        return _default_batch_cpu(A[0].numel() * A.element_size(), params)

    def head_plan(self, A, extras):
        """The incremental plan of the head for feature maps shaped like A, or the reason there
        is none (a NotIncremental)."""
        from .incremental import NotIncremental, plan_head

        key = (tuple(A.shape[1:]), A.dtype, self.split.method)
        if key not in self._plans:
            try:
                self._plans[key] = plan_head(self.split, A[:1], extras)
            except NotIncremental as exc:
                self._plans[key] = exc
        return self._plans[key]

    def _cams(self, images, A, extras, targets):
        if getattr(self, "_create_graph", False):
            plan = self.head_plan(A.detach(), extras) if self.incremental is not False else \
                ValueError("incremental=False")
            if isinstance(plan, Exception):
                raise ValueError(f"create_graph needs the incremental path, and this head has none: {plan}")
            return self._collect(A, "incremental", self._differentiable_solver(plan, A, targets))
        A = A.detach()
        if self.incremental is not False:
            plan = self.head_plan(A, extras)
            if not isinstance(plan, Exception):
                return self._collect(A, "incremental", self._incremental_solver(plan, A, targets))
            if self.incremental:
                raise ValueError(f"incremental=True: this head cannot be evaluated incrementally: {plan}")
        return self._collect(A, "fused", self._fused_solver(A, extras, targets))

    def _differentiable_solver(self, plan, A, targets):
        """image i -> a ShapleyResult whose values are a torch expression of the model's
        parameters: the same permutations and walk as the engines, in differentiable ops."""
        from .. import ops
        from ..estimator import ShapleyResult
        from .incremental import build_tables, differentiable_shapley

        h, w = A.shape[-2:]
        g = self._group
        if g == 0:
            raise ValueError(f"create_graph: the differentiable path walks permutations; sampler="
                             f"{self.sampler!r} samples coalitions (use 'stratified' or 'antithetic')")
        K_eff = -(-self.K // g) * g
        perm = ops.permutations(self.seed, 0, K_eff, h * w, g, engine=self.engine)

        def solve(i):
            tables, members, z_empty = build_tables(plan, A[i], self.baseline)

            def value_fn(Z):
                Z = Z.to(A.dtype).reshape((Z.shape[0],) + plan.z_shape)
                out = Z if plan.readout is None else plan.readout(Z)
                return self._value(out.reshape(out.shape[0], -1), targets[i])

            values, stderr, v_full, v_empty = differentiable_shapley(
                tables, members, z_empty, value_fn, perm, g)
            return ShapleyResult(values=values, stderr=stderr, n_evals=2 + K_eff * (h * w - 1),
                                 n_permutations=K_eff, n_samples=K_eff // g,
                                 v_full=v_full, v_empty=v_empty, seed=self.seed,
                                 antithetic=self.antithetic, engine="torch", sampler=self.sampler)

        return solve

    def _value(self, out, t_i):
        """The value of each coalition from the model output [B, classes]: [B, m] float64. The
        softmax runs in the output's precision (float32 at least): converting every [B, classes]
        batch to float64 first cost more than the softmax itself (ResNet-18, K=256: 45 of 245 ms),
        and a float32 model's logits carry float32 rounding anyway."""
        if self.score == "probability":
            out = torch.softmax(out if out.dtype == torch.float64 else out.float(), 1)
        return out[:, t_i].double()

    def _incremental_solver(self, plan, A, targets):
        """image i -> ShapleyResult on its cell game (tables + readout per coalition)."""
        from ..games import CellTableGame
        from .incremental import build_tables

        def solve(i):
            t_i = targets[i]
            with torch.no_grad():
                tables, members, z_empty = build_tables(plan, A[i], self.baseline)
            if plan.additive and self.score == "logit":
                # The output is z: a sum of cell games, exact within each cell (stderr 0).
                game = CellTableGame(tables[..., t_i].contiguous(), members, z_empty=z_empty[t_i])
                return game.exact_shapley()

            @torch.no_grad()
            def value_fn(Z):
                Z = Z.to(A.dtype).reshape((Z.shape[0],) + plan.z_shape)
                out = Z if plan.readout is None else plan.readout(Z)
                return self._value(out.reshape(out.shape[0], -1), t_i)

            game = CellTableGame(tables, members, readout=value_fn, z_empty=z_empty)
            return estimate_shapley(game, K=self.K, seed=self.seed, sampler=self.sampler,
                                    batch_size=self.batch_size, engine=self.engine, progress=False)

        return solve

    def _fused_solver(self, A, extras, targets):
        """image i -> ShapleyResult on the fused masked-input game (the whole head per coalition)."""
        N, C, h, w = A.shape
        players = torch.arange(h * w).reshape(h, w)
        batch_size = self.batch_size or self._default_batch(A)
        workspace = [None]  # one buffer of masked features for all images

        def solve(i):
            ex_i = [e[i:i + 1] if torch.is_tensor(e) and e.dim() > 0 and e.shape[0] == N else e
                    for e in extras]

            @torch.no_grad()
            def value_fn(feats):
                # feats is the game's workspace, rewritten for every chunk: the head may modify it.
                return self._value(self.split.head(feats.to(A.dtype), ex_i, inplace_ok=True), targets[i])

            # Half-precision models (float16, bfloat16): the engines mask float32 features, and the
            # head gets them back in its dtype.
            feats_i = A[i].float() if A.dtype in (torch.float16, torch.bfloat16) else A[i]
            game = MaskedInputGame(value_fn, feats_i, baseline=self.baseline, players=players,
                                   workspace=workspace[0])
            res = estimate_shapley(game, K=self.K, seed=self.seed, sampler=self.sampler,
                                   batch_size=batch_size, engine=self.engine, progress=False)
            workspace[0] = game.workspace
            return res

        return solve

    def _collect(self, A, path, solve):
        """Run solve(i) for every image: the maps [N, m, h, w], their SE and efficiency gaps."""
        N, C, h, w = A.shape
        maps, ses, gaps = [], [], []
        n_evals = 0
        bar = progress_bar(N, self.progress, desc="shap-cam", unit="image")
        try:
            for i in range(N):
                res = solve(i)
                maps.append(torch.as_tensor(res.values).T.reshape(-1, h, w))
                ses.append(torch.as_tensor(res.stderr).T.reshape(-1, h, w))
                gaps.append(torch.as_tensor(res.efficiency_gap).detach().reshape(-1))
                n_evals += res.n_evals
                bar.update(1)
        finally:
            bar.close()
        return torch.stack(maps).to(A.device).double(), {
            "stderr": torch.stack(ses).cpu().double(), "efficiency_gap": torch.stack(gaps).cpu(),
            "n_evals": n_evals, "path": path}


CPU_BATCH_BYTES = 24 * 2**20
CPU_BATCH_MAX_BYTES = 256 * 2**20


def _default_batch_cpu(per_eval_bytes, head_param_bytes):
    want = max(CPU_BATCH_BYTES, head_param_bytes)
    return int(max(1, min(want, CPU_BATCH_MAX_BYTES) // max(per_eval_bytes, 1)))
