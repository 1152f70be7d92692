"""Accuracy per evaluation: our samplers against the peers, at equal numbers of evaluations.

MSE against exact Shapley values (mean over players of the squared error, mean over seeds), at
budgets of 10n ... 500n evaluations (the endpoints included), over a suite of games whose exact
values are known:

  smooth-12   tanh + square of a weighted sum (a smooth, non-additive model), enumeration
  table-10    v(S) i.i.d. normal for every coalition (no structure at all), enumeration
  mlp-16      an MLP regressor (scikit-learn) on synthetic data, features outside S at a
              baseline point, enumeration of all 2^16 coalitions
  soum-30/100 shapiq's sum of unanimity models (SOUM), exact from its Moebius coefficients
  tree-30/100 a gradient-boosted tree model (scikit-learn), features outside S at a baseline
              point, exact values from shap's TreeExplainer (interventional, that one point)

Methods, side by side in one run: ours ("plain", "antithetic", "stratified", "regression" through
``estimate_shapley(..., sampler=)``; regression spends exactly the budget, through max_evals), shapiq's PermutationSamplingSV, SVARM, StratifiedSamplingSV,
KernelSHAP (paired), UnbiasedKernelSHAP (paired), kADDSHAP (paired), captum's
ShapleyValueSampling and shap's PermutationExplainer. Ours also report the coverage of
value +- 1.96 stderr.

  python benchmarks/bench_samplers.py [--seeds 30] [--quick] [--out benchmarks]
  (or in parts, one process per core: --games a,b --part 1 ..., then --merge samplers_1.json ...)

writes samplers.json and samplers_mse.png there and prints the tables for RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings

import numpy as np

import shapcam
from shapcam.estimator import SAMPLERS

OURS = ["plain", "antithetic", "stratified", "regression"]


# ----------------------------------------------------------------------------------------- games
class SuiteGame:
    """v(masks [B, n] bool) -> [B] float64, with exact Shapley values phi [n]."""

    def __init__(self, name, n, v, phi, kind):
        self.name, self.n, self.v, self.phi, self.kind = name, n, v, np.asarray(phi, float), kind

    def __call__(self, masks):
        return np.asarray(self.v(np.atleast_2d(np.asarray(masks, dtype=bool))),
                          dtype=np.float64).reshape(-1)


def enumerate_shapley(v, n):
    """Exact Shapley values by enumerating all 2^n coalitions (n <= 20)."""
    codes = np.arange(2 ** n, dtype=np.int64)
    masks = ((codes[:, None] >> np.arange(n)) & 1).astype(bool)
    vals = np.concatenate([np.asarray(v(masks[i:i + 65536]), float).reshape(-1)
                           for i in range(0, len(masks), 65536)])
    size = masks.sum(1)
    w = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.empty(n)
    for i in range(n):
        out = ~masks[:, i]
        phi[i] = (w[size[out]] * (vals[codes[out] | (1 << i)] - vals[codes[out]])).sum()
    return phi


def _masked_model(predict, x, base):
    def v(masks):
        X = np.where(masks, x[None, :], base[None, :])
        return predict(X)
    return v


def make_suite(quick=False):
    rng = np.random.default_rng(2026)
    games = []

    n = 12
    w = rng.normal(size=n)
    v = lambda M, w=w, n=n: np.tanh(M @ w / 2) + 0.3 * (M @ w) ** 2 / n  # noqa: E731
    games.append(SuiteGame("smooth-12", n, v, enumerate_shapley(v, n), "closed form / enumeration"))

    n = 10
    T = rng.normal(size=2 ** n)
    v = lambda M, T=T, n=n: T[(M.astype(np.int64) << np.arange(n)).sum(1)]  # noqa: E731
    games.append(SuiteGame("table-10", n, v, enumerate_shapley(v, n), "random table, enumeration"))

    from sklearn.neural_network import MLPRegressor

    n = 16
    X = rng.normal(size=(2000, n))
    y = np.sin(X[:, 0] * X[:, 1]) + X[:, 2] * X[:, 3] * X[:, 4] + np.abs(X[:, 5:]).sum(1) / 4 + \
        0.1 * rng.normal(size=2000)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=300, random_state=0).fit(X, y)
    v = _masked_model(mlp.predict, X[0], X.mean(0))
    games.append(SuiteGame("mlp-16", n, v, enumerate_shapley(v, n), "MLP, enumeration"))

    from shapiq_games.synthetic import SOUM

    for n, basis, top in ((30, 50, 10), (100, 100, 20)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = SOUM(n, basis, min_interaction_size=1, max_interaction_size=top, random_state=n)
            ev = g.exact_values(index="SV", order=1)
        phi = np.array([ev[(i,)] for i in range(n)])
        games.append(SuiteGame(f"soum-{n}", n, g.value_function, phi, "shapiq SOUM"))

    import shap
    from sklearn.ensemble import GradientBoostingRegressor

    for n in (30, 100):
        X = rng.normal(size=(3000, n))
        y = X[:, 0] * X[:, 1] + np.where(X[:, 2] > 0, X[:, 3], -X[:, 4]) + X[:, 5:10].sum(1) + \
            np.sin(X[:, 10:].sum(1))
        gbr = GradientBoostingRegressor(n_estimators=100, max_depth=4, random_state=0).fit(X, y)
        x, base = X[1], X.mean(0)
        expl = shap.TreeExplainer(gbr, data=base[None, :], feature_perturbation="interventional")
        phi = np.asarray(expl.shap_values(x[None, :]))[0]
        games.append(SuiteGame(f"tree-{n}", n, _masked_model(gbr.predict, x, base), phi,
                               "GBDT, shap TreeSHAP"))
    if quick:
        games = [g for g in games if g.n <= 30]
    return games


# --------------------------------------------------------------------------------------- methods
def ours(sampler):
    def run(game, budget, seed):
        if sampler in SAMPLERS:
            g = SAMPLERS[sampler]
            K = (budget - 2) // (game.n - 1) // g * g
            if K < 2 * g:  # a standard error needs 2 samples
                return None
            kw = dict(K=K)
        else:  # a coalition sampler spends exactly the budget
            kw = dict(K=None, max_evals=budget)
        r = shapcam.estimate_shapley(game, game.n, seed=seed, sampler=sampler,
                                     antithetic=sampler != "plain", progress=False, **kw)
        assert r.n_evals <= budget
        lo, hi = r.interval(0.95)
        return r.values, (r.stderr, lo, hi)
    return run


def shapiq_method(cls_name, **kw):
    def run(game, budget, seed):
        import shapiq

        approx = getattr(shapiq, cls_name)(game.n, random_state=seed, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = approx.approximate(budget=budget, game=game)
        return np.array([res[(i,)] for i in range(game.n)]), None
    return run


def captum_svs(game, budget, seed):
    import torch
    from captum.attr import ShapleyValueSampling

    K = (budget - 1) // game.n  # captum: one evaluation of the baseline, n per permutation
    if K < 1:
        return None
    torch.manual_seed(seed)
    f = lambda X: torch.from_numpy(game(X.numpy() > 0.5))  # noqa: E731
    attr = ShapleyValueSampling(f).attribute(torch.ones(1, game.n, dtype=torch.float64),
                                             baselines=torch.zeros(1, game.n, dtype=torch.float64),
                                             n_samples=K, perturbations_per_eval=game.n)
    return attr.numpy()[0], None


def shap_permutation(game, budget, seed):
    import shap

    if budget < 2 * game.n + 1:  # one forward and backward pass
        return None
    masker = shap.maskers.Independent(np.zeros((1, game.n)), max_samples=1)
    f = lambda X: game(np.asarray(X) > 0.5)  # noqa: E731
    ex = shap.PermutationExplainer(f, masker, seed=seed)
    e = ex(np.ones((1, game.n)), max_evals=budget, silent=True)
    return np.asarray(e.values)[0], None


METHODS = {
    **{f"shapcam {s}": ours(s) for s in OURS},
    "shapiq PermutationSamplingSV": shapiq_method("PermutationSamplingSV"),
    "shapiq SVARM": shapiq_method("SVARM"),
    "shapiq StratifiedSamplingSV": shapiq_method("StratifiedSamplingSV"),
    "shapiq KernelSHAP (paired)": shapiq_method("KernelSHAP", pairing_trick=True),
    "shapiq UnbiasedKernelSHAP (paired)": shapiq_method("UnbiasedKernelSHAP", pairing_trick=True),
    "shapiq kADDSHAP (paired)": shapiq_method("kADDSHAP", pairing_trick=True),
    "captum ShapleyValueSampling": captum_svs,
    "shap PermutationExplainer": shap_permutation,
}
PEERS = [m for m in METHODS if not m.startswith("shapcam")]


# ------------------------------------------------------------------------------------------ run
def run_suite(seeds=30, quick=False, mults=(10, 50, 200, 500), methods=None, log=print,
              cell_seconds=20.0, only=None, games=None):
    """Every (game, budget, method) cell over `seeds` seeds — fewer for a method whose runs take
    over cell_seconds together (its seed count is reported), and none where one run would take
    over 3 x cell_seconds by its time at the previous budget (shapiq's SVARM and kADDSHAP take a
    minute per run at n = 100, 200n: such cells are reported as too slow)."""
    games = games if games is not None else make_suite(quick)
    if only:
        games = [g for g in games if g.name in only]
    methods = methods or list(METHODS)
    cells = []
    for game in games:
        per_run = {}  # method -> (mult, seconds per run) at the last budget
        for mult in mults:
            budget = mult * game.n
            for name in methods:
                errs, cover, cover_t, secs = [], [], [], 0.0
                last = per_run.get(name)
                if last and last[1] * mult / last[0] > 3 * cell_seconds:
                    cells.append(dict(game=game.name, n=game.n, budget=budget, mult=mult, method=name,
                                      mse=None, mse_sd=None, coverage=None, seeds=0, seconds=0.0,
                                      skipped=f"too slow (~{last[1] * mult / last[0]:.0f} s per run)"))
                    continue
                for s in range(seeds):
                    t0 = time.perf_counter()
                    try:
                        out = METHODS[name](game, budget, 1000 + s)
                    except Exception as exc:  # a peer that cannot run this cell: reported, not fatal
                        out = None
                        log(f"  {name} on {game.name} @ {mult}n: {type(exc).__name__}: {exc}")
                        break
                    secs += time.perf_counter() - t0
                    if out is None:
                        break
                    est, se = out
                    errs.append(float(np.mean((np.asarray(est, float) - game.phi) ** 2)))
                    if se is not None:
                        # The references are exact up to their own rounding (shap's TreeSHAP
                        # works in float32: 6e-8 efficiency gap), which decides a "miss" only
                        # where an estimate is exact (antithetic pairs on additive parts: SE 0).
                        # Players whose estimate is exact (SE 0: null players of a tree, additive
                        # parts under antithetic pairs) are left out: they cover trivially.
                        se, lo, hi = se
                        tol, live = 1e-6 * np.abs(game.phi).max(), se > 0
                        if live.any():
                            err = np.abs(est - game.phi)[live]
                            cover.append(float(np.mean(err <= 1.96 * se[live] + tol)))
                            ph = game.phi[live]
                            cover_t.append(float(np.mean((lo[live] - tol <= ph) & (ph <= hi[live] + tol))))
                    if secs > cell_seconds:
                        break
                cells.append(dict(game=game.name, n=game.n, budget=budget, mult=mult, method=name,
                                  mse=float(np.mean(errs)) if errs else None,
                                  mse_sd=float(np.std(errs) / np.sqrt(len(errs))) if len(errs) > 1 else None,
                                  coverage=float(np.mean(cover)) if cover else None,
                                  coverage_t=float(np.mean(cover_t)) if cover_t else None,
                                  seeds=len(errs), seconds=secs))
                if errs:
                    per_run[name] = (mult, secs / len(errs))
            log(f"{game.name} @ {mult}n done")
    return games, cells


def ratios(cells, ref="shapcam plain"):
    """{(game, mult, method): mse / mse of ref} where both exist."""
    base = {(c["game"], c["mult"]): c["mse"] for c in cells if c["method"] == ref and c["mse"]}
    return {(c["game"], c["mult"], c["method"]): c["mse"] / base[(c["game"], c["mult"])]
            for c in cells if c["mse"] is not None and (c["game"], c["mult"]) in base}


def tables(games, cells):
    r = ratios(cells)
    mults = sorted({c["mult"] for c in cells})
    names = list(dict.fromkeys(c["method"] for c in cells))
    lines = ["MSE relative to plain permutation sampling at the same budget (lower is better; "
             "– : cannot run at that budget)", ""]
    head = "| method | " + " | ".join(f"{g.name} {m}n" for g in games for m in mults) + " | median |"
    lines += [head, "|" + "---|" * (2 + len(games) * len(mults))]
    for name in names:
        vals = [r.get((g.name, m, name)) for g in games for m in mults]
        ok = [v for v in vals if v is not None]
        med = f"{np.median(ok):.3f}" if ok else "–"
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) +
                     f" | **{med}** |")
    for key, what in (("coverage", "value ± 1.96·stderr"),
                      ("coverage_t", "result.interval(0.95) (Student t on n_samples - 1 df)")):
        lines += ["", f"Coverage of {what} (ours; nominal 0.95)", ""]
        lines += ["| method | " + " | ".join(f"{g.name} {m}n" for g in games for m in mults) + " |",
                  "|" + "---|" * (1 + len(games) * len(mults))]
        cov = {(c["game"], c["mult"], c["method"]): c.get(key) for c in cells}
        for name in [f"shapcam {s}" for s in OURS]:
            vals = [cov.get((g.name, m, name)) for g in games for m in mults]
            lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    # the targets
    lines += [""]
    for name in [f"shapcam {s}" for s in OURS]:
        wins = total = 0
        for g in games:
            for m in mults:
                mine = r.get((g.name, m, name))
                peers = [r.get((g.name, m, p)) for p in PEERS]
                peers = [p for p in peers if p is not None]
                if mine is None or not peers:
                    continue
                total += 1
                # exact to rounding on both sides (the whole game enumerated) counts as a tie
                wins += mine <= min(peers) or max(mine, min(peers)) < 1e-12
        lines.append(f"{name}: at or below the best peer in {wins} of {total} (game, budget) cells")
    return "\n".join(lines)


def plot(games, cells, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    names = list(dict.fromkeys(c["method"] for c in cells))
    # ours in fixed strong colours, the peers from another palette (the default cycle repeats
    # after ten lines)
    peers = [m for m in names if not m.startswith("shapcam")]
    colour = {f"shapcam {s}": c for s, c in zip(OURS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"))}
    colour.update({m: plt.cm.tab20b(i / max(1, len(peers))) for i, m in enumerate(peers)})
    for ax, g in zip(axes.flat, games):
        for name in names:
            pts = sorted((c["mult"], c["mse"]) for c in cells
                         if c["game"] == g.name and c["method"] == name and c["mse"])
            if not pts:
                continue
            ours_ = name.startswith("shapcam")
            ax.loglog(*zip(*pts), marker="o" if ours_ else ".", lw=2 if ours_ else 1,
                      ls="-" if ours_ else "--", label=name, alpha=1 if ours_ else 0.7,
                      color=colour.get(name))
        floor = [c["mse"] for c in cells if c["game"] == g.name and c["method"].startswith("shapcam")
                 and c["mse"] and c["mse"] > 1e-20]
        if floor:  # exact answers of the peers at small n (MSE ~1e-30) would squash the panel
            ax.set_ylim(bottom=min(floor) / 30)
        ax.set_title(g.name)
        ax.set_xlabel("budget / n")
        ax.set_ylabel("MSE")
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--cell-seconds", type=float, default=20.0,
                    help="stop a method's seeds in a cell past this much time (at least 3 seeds)")
    ap.add_argument("--quick", action="store_true", help="games up to n = 30, budgets 10n and 50n")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--games", default=None, help="comma-separated game names (default: all)")
    ap.add_argument("--methods", default=None, help="comma-separated name prefixes (default: all)")
    ap.add_argument("--part", default=None, help="write samplers_PART.json only (no table, no plot)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="combine parts into samplers.json, the plot and the tables")
    a = ap.parse_args(argv)
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    if a.merge:
        parts = [json.load(open(p)) for p in a.merge]
        cells = {}  # a later part's cell replaces an earlier one's
        for p in parts:
            cells.update({(c["game"], c["mult"], c["method"]): c for c in p["cells"]})
        cells = list(cells.values())
        meta = dict(parts[0]["meta"], seconds=sum(p["meta"]["seconds"] for p in parts),
                    games={k: v for p in parts for k, v in p["meta"]["games"].items()})
        games = [SuiteGame(k, v["n"], None, [], v["kind"]) for k, v in meta["games"].items()]
    else:
        mults = (10, 50) if a.quick else (10, 50, 200, 500)
        only = set(a.games.split(",")) if a.games else None
        methods = [m for m in METHODS if any(m.startswith(p) for p in a.methods.split(","))] \
            if a.methods else None
        games, cells = run_suite(a.seeds, a.quick, mults, cell_seconds=a.cell_seconds, only=only,
                                 methods=methods, log=lambda s: print(s, file=sys.stderr, flush=True))
        if only:
            games = [g for g in games if g.name in only]
        meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                    seeds=a.seeds, seconds=time.time() - t0, date=time.strftime("%Y-%m-%d"),
                    games={g.name: dict(n=g.n, kind=g.kind) for g in games})
    name = f"samplers_{a.part}.json" if a.part else "samplers.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(dict(meta=meta, cells=cells), f, indent=1)
    if a.part:
        return
    plot(games, cells, os.path.join(a.out, "samplers_mse.png"))
    print(tables(games, cells))
    print(f"\n{a.seeds} seeds per cell, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()


def bench_suite_runs(tmp_path):
    """Under pytest (`make bench`, `make bench-tiny`): the suite end to end on its two smallest
    games, 3 seeds, our samplers and one peer per library; the full suite is this script's main."""
    rng = np.random.default_rng(0)
    T = rng.normal(size=2 ** 8)
    table = lambda M: T[(M.astype(np.int64) << np.arange(8)).sum(1)]  # noqa: E731
    w = rng.normal(size=8)
    smooth8 = lambda M: np.tanh(M @ w)  # noqa: E731
    games = [SuiteGame("table-8", 8, table, enumerate_shapley(table, 8), "enumeration"),
             SuiteGame("smooth-8", 8, smooth8, enumerate_shapley(smooth8, 8), "enumeration")]
    methods = [f"shapcam {s}" for s in OURS] + ["shapiq KernelSHAP (paired)",
                                                "captum ShapleyValueSampling", "shap PermutationExplainer"]
    games, cells = run_suite(3, mults=(10, 50), methods=methods, games=games, log=lambda s: None)
    assert all(c["mse"] is not None for c in cells if c["method"].startswith("shapcam"))
    text = tables(games, cells)
    assert "shapcam stratified" in text
    plot(games, cells, str(tmp_path / "mse.png"))
