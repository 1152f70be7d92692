"""The base of every CAM method: input checks, the trunk/head split, targets, eval mode,
upsampling and normalisation. Each method overrides one thing: how its low-resolution map is
computed from the feature map A of the target layer."""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .split import layer_output_error, resolve_layer, split_model


@dataclass
class CAMResult:
    """What a CAM method computed for a batch of N images, explaining m targets per image.

    maps: [N, H, W] saliency maps at input size in [0, 1].
    values: [N, h, w] the method's map at feature-map resolution before ReLU and normalisation:
        for Shap-CAM, the Shapley value of each position (its raw Shapley map).
    targets: [N] the classes explained; scores: [N] their softmax probability on the full image.
    stderr: Shap-CAM only — the standard error of each value, [N, h, w].
    efficiency_gap: Shap-CAM only — sum(values) - (v(all) - v(none)) per image, [N] (zero up to
        float rounding: the efficiency axiom holds for every estimate).
    n_evals: evaluations of the head spent; seconds: wall time of explain.
    path: Shap-CAM only — "incremental" (cell tables + readout per coalition) or "fused" (the
        whole head per coalition on engine-written masked features).

    With several targets per image each per-target field gains an axis after N (maps [N, m, H, W],
    targets [N, m], ...). For one image given as [C, H, W] every field loses the N axis alike.
    """

    maps: torch.Tensor
    values: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    method: str
    seconds: float
    stderr: torch.Tensor | None = None
    efficiency_gap: torch.Tensor | None = None
    n_evals: int = 0
    path: str | None = None  # Shap-CAM: "incremental" or "fused" (how coalitions were evaluated)

    @property
    def raw(self):
        """Deprecated alias of ``values``."""
        _deprecated("CAMResult.raw", "CAMResult.values")
        return self.values

    @property
    def efficiency_residual(self):
        """Deprecated alias of ``efficiency_gap`` (the name ShapleyResult uses too)."""
        _deprecated("CAMResult.efficiency_residual", "CAMResult.efficiency_gap")
        return self.efficiency_gap

    def _select(self, index):
        """Index every per-target field (all but the scalars) with ``index``."""
        for name in ("maps", "values", "targets", "scores", "stderr", "efficiency_gap"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v[index])


def _deprecated(old, new):
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


_locks_guard = threading.Lock()
_model_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises explain calls on one model (any method, any thread)."""
    with _locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run in eval mode (BatchNorm statistics and dropout must not mix coalitions); restore after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


def normalize_maps(cams: torch.Tensor, size) -> torch.Tensor:
    """ReLU, bilinear upsampling to size (H, W), then min-max to [0, 1] per map — the convention of
    Grad-CAM implementations (pytorch-grad-cam normalises before and after resizing; bilinear
    interpolation commutes with the affine min-max, so once after is the same). cams: [N, m, h, w]."""
    cams = torch.relu(cams.float())
    up = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    flat = flat - flat.min(-1, keepdim=True).values
    flat = flat / (flat.max(-1, keepdim=True).values + 1e-7)
    return flat.view_as(up)


SCORES = ("probability", "logit")


def check_score(score: str) -> str:
    """What a method explains: the target's softmax "probability" or its "logit"."""
    if score not in SCORES:
        raise ValueError(f"score: expected 'probability' or 'logit', got {score!r}")
    return score


def _first_conv_channels(model: nn.Module):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


class BaseCAM:
    """Shared machinery; subclasses implement ``_cams(images, A, extras, targets) -> (cams
    [N, m, h, w], extra fields)``.

    Args:
        model: a torch CNN (any nn.Module whose forward maps images [N, C, H, W] to logits).
        target_layer: the layer whose output is the feature map: a submodule or its dotted name
            ("layer4", "features.29").
        split: how the network is cut at the layer: "auto" (torch.fx, else hooks), "fx", "hooks".
        layout: how the layer's output is laid out: "auto" ([N, C, h, w], refused where the model
            says otherwise: a channels-last map [N, h, w, C] such as Swin's stages is never read
            as channels-first) or "nchw" (it is [N, C, h, w]: no check).
    """

    name = "cam"

    def __init__(self, model: nn.Module, target_layer, *, split: str = "auto",
                 layout: str = "auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.layout = check_layout(layout)
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        self._split_method = split
        self._split = None

    @property
    def split(self):
        if self._split is None:
            self._split = split_model(self.model, self.layer_name, self._split_method)
        return self._split

    # --- public API -------------------------------------------------------------------------
    def __call__(self, images, targets=None) -> torch.Tensor:
        """Saliency maps [N, H, W] in [0, 1] (or [N, m, H, W] for several targets per image)."""
        return self.explain(images, targets).maps

    supports_create_graph = False
    # Images through the trunk at a time: explain keeps one pass's feature maps (and their
    # graph), so a large batch is explained in passes of this many. Every method explains each
    # image on its own, so the maps are those of one pass up to the trunk's float rounding
    # (a convolution may order its sums by batch size).
    images_per_pass = 16

    def explain(self, images, targets=None, *, create_graph: bool = False) -> CAMResult:
        """Explain images [N, C, H, W] (or one image [C, H, W]) for targets: None (the predicted
        class), an int (the same class for every image), or one class (or list of classes) per
        image. create_graph: return maps and values that are differentiable with respect to the
        model's parameters (for a loss on the maps, e.g. distillation with explanations); the
        methods that offer it say so (Shap-CAM on the incremental path)."""
        t0 = time.perf_counter()
        if create_graph and not self.supports_create_graph:
            raise ValueError(f"create_graph: {type(self).__name__} does not offer differentiable maps")
        images, squeeze_batch = self._check_images(images)
        N = images.shape[0]
        step = _check_positive_int(self.images_per_pass, "images_per_pass")
        # One explain at a time per model: eval_mode flips the model's training flags, which two
        # threads would race on (BatchNorm statistics would change mid-run).
        with model_lock(self.model), eval_mode(self.model):
            self._create_graph = bool(create_graph)
            parts = [self._explain_batch(images[a:a + step], _targets_of(targets, N, a, a + step))
                     for a in range(0, N, step)]
        cams, tgt, multi, scores, fields = _concat_parts(parts)
        maps = normalize_maps(cams, images.shape[-2:])
        res = CAMResult(maps=maps, values=cams, targets=tgt.cpu(), scores=scores.cpu(),
                        method=self.name, seconds=0.0, **fields)
        if not multi:
            res._select((slice(None), 0))
        if squeeze_batch:
            res._select(0)
        res.seconds = time.perf_counter() - t0
        return res

    def _explain_batch(self, images, targets):
        """(maps before normalisation [N, m, h, w], targets [N, m], multi, scores [N, m], extra
        result fields) for a checked batch, in eval mode: the trunk once, then the method."""
        with torch.set_grad_enabled(self._create_graph):
            A, extras = self._trunk(images)
            logits = self.split.head(A, extras)
        if A.dim() != 4:
            raise ValueError(f"target_layer {self.layer_name!r}: output has shape "
                             f"{tuple(A.shape)}; a CAM needs a [N, C, h, w] feature map")
        if self.layout == "auto":
            why = channels_last_evidence(A, self.split)
            if why:
                raise ValueError(
                    f"target_layer {self.layer_name!r}: its output {tuple(A.shape)} looks "
                    f"channels-last [N, h, w, C] ({why}), and a CAM reads [N, C, h, w]: target "
                    f"the layer after the permute to channels-first (torchvision's Swin: "
                    f"'permute'), or pass layout='nchw' if it is channels-first")
        tgt, multi = self._resolve_targets(targets, logits)
        scores = torch.softmax(logits.detach().double(), 1).gather(1, tgt)
        cams, fields = self._cams(images, A, extras, tgt)
        return cams, tgt, multi, scores, fields

    def _cams(self, images, A, extras, targets):
        raise NotImplementedError

    def _trunk(self, images):
        """(A, extras) from the split's trunk. An fx head that takes a non-tensor value computed
        before the layer (``bs = x.size(0)``) would see it stale for a batch of coalitions, so
        such a split is replaced by the hooks split (split="auto") or refused (split="fx")."""
        A, extras = self.split.trunk(images)
        if not torch.is_tensor(A):
            raise ValueError(layer_output_error(self.layer_name, A))
        stale = [type(e).__name__ for e in extras if not torch.is_tensor(e) and e is not None]
        if self.split.method == "fx" and stale:
            msg = (f"the head after {self.layer_name!r} uses non-tensor values computed before it "
                   f"({', '.join(stale)}, e.g. a batch size), which would be stale for a batch of "
                   "coalitions")
            if self._split_method == "fx":
                raise ValueError(msg + "; use split='hooks' or 'auto'")
            warnings.warn(msg + "; falling back to hooks (slower)", RuntimeWarning, stacklevel=3)
            self._split = split_model(self.model, self.layer_name, "hooks")
            A, extras = self.split.trunk(images)
        return A, extras

    # --- checks -----------------------------------------------------------------------------
    def _model_param(self):
        return next(self.model.parameters(), None)

    def _check_images(self, images):
        if not torch.is_tensor(images):
            raise TypeError(f"images: expected a torch tensor [N, C, H, W], got {type(images).__name__}")
        squeeze = images.dim() == 3
        if squeeze:
            images = images[None]
        if images.dim() != 4:
            raise ValueError(f"images: expected [N, C, H, W] (or [C, H, W]), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images: empty batch")
        if not images.is_floating_point():
            raise TypeError(f"images: expected a floating-point tensor, got {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("images: contain NaN or inf")
        want = _first_conv_channels(self.model)
        if want is not None and images.shape[1] != want:
            raise ValueError(f"images: the model's first convolution takes {want} channels, "
                             f"got {images.shape[1]} (shape {tuple(images.shape)})")
        p = self._model_param()
        if p is not None:
            images = images.to(device=p.device, dtype=p.dtype)
        return images, squeeze

    def _resolve_targets(self, targets, logits):
        check_logits(logits)
        N, classes = logits.shape[0], logits.shape[1]
        multi = False

        def _class_id(v):  # an int class id in [0, classes), checked before any int64 tensor
            c = _int_class_id(v)
            if not 0 <= c < classes:
                raise ValueError(f"targets: class ids must lie in [0, {classes}), got {c}")
            return c

        if targets is None:
            t = logits.argmax(1)[:, None]
        elif isinstance(targets, (bool, np.bool_, float, np.floating)):
            _class_id(targets)  # raises: a bool or a float is not a class id
        elif _is_class_id(targets) or (torch.is_tensor(targets) and targets.dim() == 0):
            t = torch.full((N, 1), _class_id(targets), dtype=torch.long)
        else:
            if torch.is_tensor(targets) or isinstance(targets, np.ndarray):
                if not (targets.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
                        if torch.is_tensor(targets) else np.issubdtype(targets.dtype, np.integer)):
                    raise TypeError(f"targets: expected integer class ids, got dtype {targets.dtype}")
                targets = targets.tolist()
            if isinstance(targets, (str, bytes)) or not hasattr(targets, "__len__"):
                raise TypeError(f"targets: expected None, a class id, or one entry per image; got "
                                f"{type(targets).__name__}")
            rows = list(targets)
            if len(rows) != N:
                raise ValueError(f"targets: expected one entry per image ({N}), got {len(rows)}")
            multi = any(isinstance(r, (list, tuple)) for r in rows)
            if multi:
                if not all(isinstance(r, (list, tuple)) for r in rows) or len({len(r) for r in rows}) != 1:
                    raise ValueError("targets: several classes per image need the same number of "
                                     "classes (a list) for every image")
                if len(rows[0]) == 0:
                    raise ValueError("targets: each image needs at least one class, got empty lists")
                t = torch.tensor([[_class_id(c) for c in r] for r in rows], dtype=torch.long)
            else:
                t = torch.tensor([_class_id(r) for r in rows], dtype=torch.long)[:, None]
        if t.numel() and (t.min() < 0 or t.max() >= classes):
            raise ValueError(f"targets: class ids must lie in [0, {classes}), got {t.flatten().tolist()}")
        return t.to(logits.device), multi


LAYOUTS = ("auto", "nchw")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r} (channels-last and "
                         f"token maps: target a layer whose output is [N, C, h, w])")
    return layout


def channels_last_evidence(A, split) -> str | None:
    """Why A [N, a, b, c] is likely [N, h, w, C] rather than [N, C, h, w], or None: the head
    starts with a LayerNorm or Linear over its last axis (Swin's stages: norm, then a permute to
    channels-first); or the map's shape is [N, s, s, c] with c != s (a square grid with its
    channels last: read channels-first it would be C = h = s and w = c). A permute alone is no
    evidence: MTCNN's ONet permutes a channels-first map before flattening it."""
    a, b, c = A.shape[1:]
    gm = getattr(split, "head_module", None)
    if split.method == "fx" and isinstance(gm, torch.fx.GraphModule):
        act = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
        for user in (act.users if act is not None else ()):
            if user.op == "call_module":
                mod = gm.get_submodule(user.target)
                if isinstance(mod, nn.LayerNorm) and tuple(mod.normalized_shape) == (c,) and c != a:
                    return f"the head's first step is a LayerNorm over its last axis ({c})"
                if isinstance(mod, nn.Linear) and mod.in_features == c and c != a:
                    return f"the head's first step is a Linear on its last axis ({c})"
    if a == b and c != b:
        return f"a square {a}x{b} grid before its last axis of {c}"
    return None


def _check_positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


def _targets_of(targets, N, a, b):
    """The targets of images [a, b) of N: per-image targets sliced, a class for all as is
    (checked in full by _resolve_targets)."""
    if targets is None or isinstance(targets, (bool, np.bool_, float, np.floating, int, np.integer)) \
            or (torch.is_tensor(targets) and targets.dim() == 0) or isinstance(targets, (str, bytes)) \
            or not hasattr(targets, "__len__"):
        return targets
    if len(targets) != N:
        raise ValueError(f"targets: expected one entry per image ({N}), got {len(targets)}")
    return targets[a:b]


def _concat_parts(parts):
    """One (cams, targets, multi, scores, fields) from the passes' in image order."""
    if len(parts) == 1:
        return parts[0]
    cams = torch.cat([p[0] for p in parts])
    tgt = torch.cat([p[1] for p in parts])
    scores = torch.cat([p[3] for p in parts])
    multi = parts[0][2]
    fields = {}
    for key, first in parts[0][4].items():
        vals = [p[4][key] for p in parts]
        if torch.is_tensor(first):
            fields[key] = torch.cat(vals)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            fields[key] = sum(vals)
        else:  # a label (Shap-CAM's path): the same for every pass
            fields[key] = first if all(v == first for v in vals) else "mixed"
    return cams, tgt, multi, scores, fields


def check_logits(out):
    """The model's output must be the logits, one tensor [N, classes]: anything else (a tuple of
    logits and auxiliary outputs, a dict, an ImageNet model's [N, classes, 1, 1]) is refused in
    one line that says what to do."""
    if torch.is_tensor(out) and out.dim() == 2:
        return
    if torch.is_tensor(out):
        got = f"a tensor of shape {tuple(out.shape)}"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)}"
    elif isinstance(out, dict):
        got = f"a dict (keys {list(out)[:4]})"
    else:
        got = f"a {type(out).__name__}"
    raise ValueError(f"model: its forward returned {got}; a CAM needs the logits as one tensor "
                     f"[N, classes] (wrap the model so that it returns them, e.g. a module whose "
                     f"forward is `return model(x)[0]` or `model(x)['logits']`)")


def _is_class_id(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_class_id(v) -> int:
    """An int class id; bools and floats are refused (3.7 is not class 3, True is not class 1)."""
    if torch.is_tensor(v) and v.dim() == 0:
        if v.is_floating_point() or v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"targets: class ids must be integers, got a {v.dtype} tensor")
        return int(v)
    if not _is_class_id(v):
        raise TypeError(f"targets: class ids must be integers, got {v!r} ({type(v).__name__})")
    return int(v)
