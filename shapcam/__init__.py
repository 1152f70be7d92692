"""shapcam: fast, honest Shapley values (permutation sampling with standard errors) and Shap-CAM.

    res = shapcam.estimate_shapley(value_fn, n_players, K=64)   # res.values, res.stderr
    phi = shapcam.exact_shapley(value_fn, n_players)             # enumeration oracle
    game = shapcam.MaskedInputGame(f, x, players=player_map)     # fused masked-input game
"""
from ._engine import engine_info
from .estimator import ShapleyResult, estimate_shapley
from .exact import exact_shapley
from .games import Game, MaskedInputGame, MaskGame

__all__ = ["engine_info", "estimate_shapley", "exact_shapley", "ShapleyResult", "Game", "MaskGame",
           "MaskedInputGame"]
__version__ = "0.1.0"
