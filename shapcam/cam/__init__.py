"""CAM methods over one split of the network at a target layer: Shap-CAM and the baselines."""
from .base import BaseCAM, CAMResult, eval_mode, normalize_maps
from .gradcam import GradCAM, GradCAMPlusPlus
from .scorecam import ScoreCAM
from .shap_cam import ShapCAM
from .split import resolve_layer, split_model

METHODS = {"shapcam": ShapCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}

__all__ = ["BaseCAM", "CAMResult", "GradCAM", "GradCAMPlusPlus", "ScoreCAM", "ShapCAM", "METHODS",
           "eval_mode", "normalize_maps", "resolve_layer", "split_model"]
