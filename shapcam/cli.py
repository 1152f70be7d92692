"""The `shapcam` command: `shapcam demo`, `shapcam info`."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _tabular_demo(args) -> int:
    """Explain one prediction of a small nonlinear tabular model (n = 12 features) and check the
    sampled values against the exact ones."""
    from . import engine_info, estimate_shapley, exact_shapley

    rng = np.random.default_rng(0)
    n = 12
    W1 = rng.normal(size=(n, 16))
    w2 = rng.normal(size=16)
    x = rng.normal(size=n)
    background = np.zeros(n)

    def model(X):  # [B, n] -> [B]: a one-hidden-layer network
        return np.tanh(X @ W1) @ w2

    def value_fn(masks):  # coalition S keeps x on S, the background elsewhere
        return model(np.where(masks, x, background))

    t0 = time.perf_counter()
    res = estimate_shapley(value_fn, n, K=args.K, seed=args.seed)
    t_est = time.perf_counter() - t0
    exact = exact_shapley(value_fn, n)
    print(f"shapcam demo — a tabular model, n = {n} features, K = {res.n_permutations} "
          f"permutations ({res.n_evals} evaluations, engine: {res.engine}, {t_est * 1e3:.1f} ms)")
    print(f"{'feature':>7} {'estimate':>10} {'stderr':>8} {'exact':>10} {'|err|/se':>8}")
    for i in range(n):
        z = abs(res.values[i] - exact[i]) / res.stderr[i] if res.stderr[i] > 0 else 0.0
        print(f"{i:>7} {res.values[i]:>10.4f} {res.stderr[i]:>8.4f} {exact[i]:>10.4f} {z:>8.2f}")
    print(f"efficiency: sum(values) - (v(all) - v(none)) = {res.efficiency_gap:.2e}")
    print(f"engine: {json.dumps(engine_info())}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="shapcam", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the bundled demo")
    demo.add_argument("--K", type=int, default=256, help="permutations to sample")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="print which engine shapcam runs on")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return _tabular_demo(args)
    from . import engine_info

    print(json.dumps(engine_info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
