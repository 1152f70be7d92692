"""shapcam: fast, honest Shapley values (permutation sampling with standard errors) and Shap-CAM.

    res = shapcam.estimate_shapley(value_fn, n_players, K=64)   # res.values, res.stderr
    phi = shapcam.exact_shapley(value_fn, n_players)             # enumeration oracle
    game = shapcam.MaskedInputGame(f, x, players=player_map)     # fused masked-input game
    cam = shapcam.ShapCAM(model, "layer4", K=64); maps = cam(images)   # needs torch

The CAM classes load torch on first use; the estimator needs only NumPy.
"""
from ._engine import engine_info
from ._version import __version__
from .estimator import ShapleyResult, estimate_shapley
from .exact import exact_shapley
from .games import CellTableGame, Game, MaskedInputGame, MaskGame, TruncatedGame
from .tabular import TabularGame, explain_rows

_CAM_NAMES = ("ShapCAM", "GradCAM", "GradCAMPlusPlus", "ScoreCAM", "RISE", "MeaningfulPerturbation",
              "CAMResult")

__all__ = ["__version__", "engine_info", "estimate_shapley", "exact_shapley", "ShapleyResult", "Game", "MaskGame", "CellTableGame", "TruncatedGame",
           "MaskedInputGame", "TabularGame", "explain_rows", *_CAM_NAMES]


def __getattr__(name):
    if name in _CAM_NAMES:
        from . import cam

        return getattr(cam, name)
    raise AttributeError(f"module 'shapcam' has no attribute {name!r}")
