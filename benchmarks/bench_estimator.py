"""Estimator throughput on non-image games (evaluations/s), and accuracy per budget against the
exact values, beside the peers users would reach for (captum, shapiq) at equal evaluation counts.

    pytest benchmarks/bench_estimator.py
"""
import numpy as np
import pytest

from conftest import TINY
import shapcam
from shapcam import _engine

ENGINES = ["reference"] + (["native"] if _engine.native() is not None else [])


def tabular_game(n=30, seed=0):
    """A one-hidden-layer network on n features, explained at one point against a zero baseline."""
    rng = np.random.default_rng(seed)
    W1, w2, x = rng.normal(size=(n, 32)) / np.sqrt(n), rng.normal(size=32), rng.normal(size=n)
    return lambda m: np.tanh(np.where(m, x, 0.0) @ W1) @ w2


def cheap_game(n=30):
    """Engine overhead dominates: v(S) = sum of the weights in S."""
    w = np.linspace(-1, 1, n)
    return lambda m: m @ w


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("game", ["tabular", "cheap"])
@pytest.mark.parametrize("K", [16, 1024] if TINY else [16, 64, 256, 1024])
@pytest.mark.parametrize("sampler", ["stratified", "regression"])
def bench_estimate(benchmark, record, engine, game, K, sampler):
    f = tabular_game() if game == "tabular" else cheap_game()
    # the rounds repeat one seed, as a loop explaining many inputs does: the regression sampler
    # (the default) takes its pairs and counts from its design cache from the third round on
    # (throughput_vs_build.py --fresh-seeds times first runs)
    res = benchmark(shapcam.estimate_shapley, f, 30, K, engine=engine, sampler=sampler)
    name = f"estimate {game} n=30 K={K}" + ("" if sampler == "stratified" else f" {sampler}")
    record(name, engine, items=res.n_evals, unit="eval")


# --- accuracy at equal budgets -----------------------------------------------------------------

def table_game(n, seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=1 << n)
    bits = 1 << np.arange(n)
    return lambda m: table[np.asarray(m).astype(np.int64) @ bits]


def smooth_game(n):
    w = np.linspace(0.2, 1.0, n)
    return lambda m: np.tanh(np.asarray(m, dtype=float) @ w / 2) ** 2


def _captum_sv(game, n, K, seed):
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(seed)
    fwd = lambda z: torch.as_tensor(game(z.numpy() > 0.5))
    svs = captum.ShapleyValueSampling(fwd)
    attr = svs.attribute(torch.ones(1, n, dtype=torch.float64), baselines=0.0, n_samples=K,
                         perturbations_per_eval=64)
    return attr[0].numpy()


def _shapiq_sv(game, n, budget, seed):
    shapiq = pytest.importorskip("shapiq")
    approx = shapiq.PermutationSamplingSV(n, random_state=seed)
    # shapiq also calls the game with a single 1-D coalition
    iv = approx.approximate(budget, lambda m: np.atleast_1d(np.asarray(game(np.atleast_2d(m)), dtype=float)))
    return np.array([iv[(i,)] for i in range(n)])


@pytest.mark.parametrize("game_name", ["table", "smooth"])
@pytest.mark.parametrize("K", [8, 32] if TINY else [8, 32, 128])
def bench_accuracy(benchmark, game_name, K):
    """Mean squared error against the exact values over R seeds at an equal budget of
    K * (n - 1) + 2 evaluations (captum's sampler spends K * n + 1: one more per permutation)."""
    n, R = 10, (4 if TINY else 40)
    game = table_game(n, 1) if game_name == "table" else smooth_game(n)
    exact = shapcam.exact_shapley(game, n).values
    budget = K * (n - 1) + 2
    runs = {
        "shapcam antithetic": lambda s: shapcam.estimate_shapley(game, n, K, seed=s,
                                                                 sampler="antithetic").values,
        "shapcam regression": lambda s: shapcam.estimate_shapley(game, n, K, seed=s,
                                                                 sampler="regression").values,
        "shapcam plain": lambda s: shapcam.estimate_shapley(game, n, K, seed=s, antithetic=False).values,
        "captum ShapleyValueSampling": lambda s: _captum_sv(game, n, K, s),
        "shapiq PermutationSamplingSV": lambda s: _shapiq_sv(game, n, budget, s),
    }

    def measure():
        return {name: float(np.mean([np.mean((fn(s) - exact) ** 2) for s in range(R)]))
                for name, fn in runs.items()}

    mse = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(group=f"accuracy {game_name} n={n} K={K}", mse=mse, budget=budget)
    ACCURACY.append((game_name, n, K, budget, mse))


ACCURACY = []


def pytest_sessionfinish_hook():
    return ACCURACY
