"""Estimator throughput on the cheap game (engine overhead dominates: v(S) = sum of weights),
two builds side by side, interleaved in separate processes (this VM's run-to-run noise is ±20%).

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py -q build_ext --inplace)
    python benchmarks/throughput_vs_build.py /tmp/old . [--repeats 6]

Prints evaluations/s (median of 7 timed runs of K=1024, n=30, native engine) per build and sampler
("regression" spends K * (n - 1) evaluations too). The timed runs share one seed, as a loop that
explains many inputs with the default seed does (the regression sampler then takes its coalitions
and its fit's counts from shapcam.regression.design_cache from the third on); with --fresh-seeds
each run has a seed of its own (nothing to reuse: the cost of a first run); with --ks 16,64,256,1024
the Ks in turn in each process (the regression sampler's fixed cost shows at small K).

    python benchmarks/throughput_vs_build.py /tmp/old . --pytest [--repeats 2]

runs each tree's own benchmarks/bench_estimator.py cheap-game rows under pytest-benchmark instead
(the issue's benchmark as it was filed: the old tree's rows time its default, the new tree's
regression rows the new default), the trees alternately, each importing its own shapcam.

    python benchmarks/throughput_vs_build.py --breakdown

times the parts of one regression run on this tree instead (ns per evaluation): drawing the pairs'
coalitions (and, for comparison, a whole permutation per pair as before), the game, the fit's
statistics, the residual moments, the whole run, and a stratified run of the same evaluations.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CODE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
# An editable install's import hook would take shapcam from its own tree whatever sys.path says.
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                 and "__editable__" not in getattr(type(f), "__module__", "")]
import shapcam
assert shapcam.__file__.startswith(sys.argv[1]), shapcam.__file__
n = 30
w = np.linspace(-1, 1, n)
f = lambda m: m @ w
kw = json.loads(sys.argv[2])
fresh = kw.pop("fresh")
ks = kw.pop("ks")
import inspect
if "sampler" not in inspect.signature(shapcam.estimate_shapley).parameters:
    kw = {"antithetic": kw["sampler"] != "plain"}  # a build from before sampler=
shapcam.estimate_shapley(f, n, 64, engine="native", **kw)
rates = []
for K in ks:  # one process, the Ks in turn (as a session of calls would run them)
    reps = 7 if K >= 1024 else 51
    ts = []
    for i in range(reps):
        t = time.perf_counter()
        r = shapcam.estimate_shapley(f, n, K, engine="native", seed=i + 1 if fresh else 0, **kw)
        ts.append(time.perf_counter() - t)
    rates.append(r.n_evals / sorted(ts)[reps // 2])
print(json.dumps(rates))
"""


PYTEST = r"""
import os, sys
root = sys.argv[1]
sys.path.insert(0, root)
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                 and "__editable__" not in getattr(type(f), "__module__", "")]
import shapcam
assert shapcam.__file__.startswith(root), shapcam.__file__
os.chdir(root)
import pytest
sys.exit(pytest.main(["benchmarks/bench_estimator.py", "-k", "bench_estimate and cheap and native",
                      "-q", "-s", "-p", "no:cacheprovider", "--benchmark-columns=median"]))
"""


def pytest_rows(old, new, repeats):
    """The cheap-game rows of each tree's bench_estimator.py (ms a run, medians), alternately."""
    import re

    rows = {}
    for _ in range(repeats):
        for build, path in (("old", old), ("new", new)):
            out = subprocess.run([sys.executable, "-c", PYTEST, os.path.abspath(path)],
                                 capture_output=True, text=True, cwd="/")
            if out.returncode:
                sys.exit(out.stdout[-2000:] + out.stderr[-2000:])
            for line in out.stdout.splitlines():
                m = re.match(r"\| estimate cheap n=30 K=(\d+)( \w+)? \| native \| ([\d.]+) \|", line)
                if m:
                    # a row without a sampler's name: the old tree's default, the new tree's stratified
                    what = (m.group(2) or "").strip() or ("default" if build == "old" else "stratified")
                    rows.setdefault((int(m.group(1)), build, what), []).append(float(m.group(3)))
    for (K, build, what), v in sorted(rows.items()):
        print(f"K={K:<5d} {build:4s} {what:11s} {statistics.median(v):7.3f} ms a run "
              f"(runs: {', '.join(f'{x:.3f}' for x in v)})")


def breakdown():
    import time

    import numpy as np

    import shapcam
    from shapcam import ops, reference
    from shapcam import regression as rg

    n, K, seed = 30, 1024, 0
    w = np.linspace(-1, 1, n)
    run = shapcam.estimate_shapley(lambda m: m @ w, n, K, engine="native", sampler="regression")
    P, E = run.n_samples, run.n_evals
    plan = rg.make_plan(n, E - 2)

    def med(f, r=7):
        ts = []
        for _ in range(r):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[r // 2]

    masks, packed = rg.pair_masks(seed, 0, P, plan, "native", packed=True)
    Y = masks @ w
    mw, F = 1, rg.FOLDS
    fit = rg.Fit(plan, seed, "native", [0.0], [w.sum()])
    fit.keep(0, packed)
    q = plan.qpos
    beta, sterm = np.zeros((F, n, mw)), np.zeros((F, n + 1, mw))
    dY = (Y[0::2] - Y[1::2])[:, None]

    seeds = iter(range(1, 1 << 30))

    def stats():
        fit._add_pairs(fit._new_stats(mw), 0, P, Y[:, None])

    parts = [
        ("the pairs' coalitions (masks + packed)", lambda: rg.pair_masks(seed, 0, P, plan, "native", packed=True)),
        ("(before: one permutation per pair)", lambda: ops.ranks(seed, 0, P, n, reference.PLAIN, engine="native")),
        ("the game on the pairs' masks", lambda: masks @ w),
        ("the fit's statistics (counts, h)", stats),
        ("the residual moments", lambda: rg.pair_moments(packed, n, F, dY, beta, sterm, q, "native")),
        ("a whole regression run (the seed again)", lambda: shapcam.estimate_shapley(
            lambda m: m @ w, n, K, engine="native", sampler="regression")),
        ("a whole regression run (a new seed)", lambda: shapcam.estimate_shapley(
            lambda m: m @ w, n, K, engine="native", sampler="regression", seed=next(seeds))),
        ("a whole stratified run", lambda: shapcam.estimate_shapley(lambda m: m @ w, n, K, engine="native",
                                                                      sampler="stratified")),
    ]
    print(f"n = {n}, K = {K}: {P} pairs, {E} evaluations")
    for name, f in parts:
        t = med(f)
        print(f"{name:42s} {t * 1e3:7.2f} ms {t / E * 1e9:7.1f} ns/evaluation")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", nargs="?")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--pytest", action="store_true", help="each tree's bench_estimator.py cheap rows")
    ap.add_argument("--fresh-seeds", action="store_true", help="a new seed for every timed run")
    ap.add_argument("--ks", default="1024", help="comma-separated K values, timed in turn in one "
                    "process (e.g. 16,64,256,1024: the fixed costs at small K)")
    a = ap.parse_args()
    if a.breakdown:
        return breakdown()
    if not (a.old and a.new):
        ap.error("old and new build paths are required (or --breakdown)")
    if a.pytest:
        return pytest_rows(a.old, a.new, a.repeats)
    cfgs = [("old", a.old, "antithetic"), ("old", a.old, "plain"),
            ("new", a.new, "antithetic"), ("new", a.new, "plain"), ("new", a.new, "stratified"),
            ("new", a.new, "regression")]
    ks = [int(k) for k in a.ks.split(",")]
    rows = {}
    for _ in range(a.repeats):
        for build, path, sampler in cfgs:
            kw = {"sampler": sampler, "antithetic": sampler != "plain", "fresh": a.fresh_seeds,
                  "ks": ks}
            out = subprocess.run([sys.executable, "-c", CODE, os.path.abspath(path), json.dumps(kw)],
                                 capture_output=True, text=True, cwd="/")
            if out.returncode:
                sys.exit(out.stderr)
            for K, rate in zip(ks, json.loads(out.stdout.split("\n")[-2])):
                rows.setdefault((K, build, sampler), []).append(rate)
    for (K, build, sampler), v in sorted(rows.items(), key=lambda kv: kv[0][0]):
        print(f"{'' if len(ks) == 1 else f'K={K:<5d} '}{build:4s} {sampler:11s} "
              f"{statistics.median(v) / 1e6:6.2f} M evals/s (runs: {', '.join(f'{x / 1e6:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
