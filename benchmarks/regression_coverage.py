"""Coverage of the regression sampler's 95% intervals at the smallest budgets, over many seeds
(bench_samplers.py's 30 seeds give each cell a standard error of ~0.01-0.015).

    python benchmarks/regression_coverage.py --games smooth-12,table-10,mlp-16,soum-30,tree-30 \
        --seeds 300 --out /tmp/cov_a.json

Prints, per (game, budget), the fraction of (run, player) intervals `res.interval(0.95)` that
hold the exact value (players with stderr 0 left out, as in bench_samplers.py) and its standard
error over the runs.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_samplers as B  # noqa: E402
import shapcam  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--games", default="smooth-12,table-10,mlp-16,soum-30,tree-30,soum-100,tree-100")
    ap.add_argument("--mults", default="10,50")
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    sel = a.games.split(",")
    games = {g.name: g for g in B.make_suite(quick=not any(x.endswith("100") for x in sel))}
    out = {}
    for name in sel:
        g = games[name]
        tol = 1e-6 * np.abs(g.phi).max()
        for mult in (int(x) for x in a.mults.split(",")):
            cov = []
            for s in range(a.seeds):
                r = shapcam.estimate_shapley(g, g.n, K=None, max_evals=mult * g.n, seed=5000 + s,
                                             sampler="regression", progress=False)
                lo, hi = r.interval(0.95)
                live = r.stderr > 0
                if live.any():
                    cov.append(np.mean(((lo - tol <= g.phi) & (g.phi <= hi + tol))[live]))
            key = f"{name} {mult}n"
            out[key] = {"coverage": float(np.mean(cov)), "se": float(np.std(cov) / np.sqrt(len(cov))),
                        "runs": len(cov)}
            print(f"{key:16s} coverage {out[key]['coverage']:.3f} ± {out[key]['se']:.3f}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
