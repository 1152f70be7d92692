"""Gradient-based baselines: Grad-CAM (Selvaraju et al. 2017; the paper's Eq. 1-2) and Grad-CAM++
(Chattopadhay et al. 2018, with the exponential of the score as in their Eq. 19)."""
from __future__ import annotations

import torch

from .base import BaseCAM, check_score


class GradCAM(BaseCAM):
    """Grad-CAM: L = ReLU(sum_k w_k A_k) with w_k = mean over positions of dY/dA_k.

    score: "logit" (the class score before softmax, as in Selvaraju et al. and pytorch-grad-cam)
    or "probability" (the paper's Y^c).
    """

    name = "gradcam"
    supports_create_graph = True  # explain(create_graph=True): maps differentiable (double backprop)

    def __init__(self, model, target_layer, *, score: str = "logit", split: str = "auto",
                 layout: str = "auto"):
        super().__init__(model, target_layer, split=split, layout=layout)
        self.score = check_score(score)

    def _gradients(self, A, extras, targets):
        """dY_t/dA for every target slot: [N, m, C, h, w]. With create_graph, A is the trunk's
        output in the graph of the model's parameters and the gradients keep their own graph."""
        graph = getattr(self, "_create_graph", False)
        acts = A if graph else A.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.split.head(acts, extras)
            if self.score == "probability":
                out = torch.softmax(out, 1)
            grads = []
            for j in range(targets.shape[1]):
                y = out.gather(1, targets[:, j:j + 1]).sum()
                grads.append(torch.autograd.grad(y, acts, create_graph=graph,
                                                 retain_graph=graph or j + 1 < targets.shape[1])[0])
        return torch.stack(grads, 1)

    def _weights(self, A, grads):
        return grads.mean((3, 4))  # [N, m, C]

    def _cams(self, images, A, extras, targets):
        grads = self._gradients(A, extras, targets)
        w = self._weights(A, grads)
        cams = (w[..., None, None] * A[:, None]).sum(2)
        return (cams if getattr(self, "_create_graph", False) else cams.detach()), {}


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++: w_k = sum_ij relu(g_ij) a_ij, a_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)
    (zero where g = 0), with g = dY/dA — the form pytorch-grad-cam implements."""

    name = "gradcam++"

    def _weights(self, A, grads):
        g2 = grads ** 2
        g3 = g2 * grads
        sum_a = A[:, None].sum((3, 4), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        return (torch.relu(grads) * aij).sum((3, 4))
