"""CAM methods over one split of the network at a target layer: Shap-CAM and the baselines."""
from __future__ import annotations

import inspect

from .base import BaseCAM, CAMResult, eval_mode, normalize_maps
from .gradcam import GradCAM, GradCAMPlusPlus
from .perturbation import RISE, MeaningfulPerturbation
from .scorecam import ScoreCAM
from .shap_cam import ShapCAM
from .split import resolve_layer, split_model

# The one registry of methods by name: the CLI, the evaluation runner and make_cam read it.
METHODS = {"shapcam": ShapCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM,
           "rise": RISE, "mask": MeaningfulPerturbation}


def parse_methods(spec) -> list:
    """Method names from "all", a comma list ("shapcam,gradcam") or a list; ValueError naming the
    unknown ones."""
    if isinstance(spec, str):
        names = list(METHODS) if spec.strip().lower() == "all" else \
            [m.strip().lower() for m in spec.split(",") if m.strip()]
    else:
        names = [str(m).lower() for m in spec]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ValueError(f"methods: unknown {bad or spec!r}; choose from {', '.join(METHODS)} or all")
    return list(dict.fromkeys(names))


def make_cam(name: str, model, target_layer, **options):
    """The CAM method ``name`` (a key of METHODS) on model at target_layer.

    options: keyword arguments of the methods' constructors (``K``, ``seed``, ``batch_size``,
    ``score``, ...). Each method takes those its constructor has and ignores the rest, so one set
    of options can build every method (a batch_size goes to Shap-CAM and Score-CAM alike); None
    means "the method's default".
    """
    if name not in METHODS:
        raise ValueError(f"method: unknown {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k in params and v is not None}
    return cls(model, target_layer, **kwargs)


__all__ = ["BaseCAM", "CAMResult", "GradCAM", "GradCAMPlusPlus", "ScoreCAM", "ShapCAM", "RISE",
           "MeaningfulPerturbation", "METHODS",
           "eval_mode", "make_cam", "normalize_maps", "parse_methods", "resolve_layer", "split_model"]
