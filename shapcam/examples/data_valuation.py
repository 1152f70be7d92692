"""Data valuation with Shapley values (Data Shapley, Ghorbani & Zou 2019), locally or on a cluster.

The players are training points; the value of a subset is the validation accuracy of a logistic
regression (scikit-learn) trained on it. A fraction of the training labels is flipped, so the
result can be checked: flipped points should get the lowest values, and removing the most
valuable points should hurt the model more than removing the least valuable ones.

    python -m shapcam.examples.data_valuation                       # this process
    python -m shapcam.examples.data_valuation --executor dask -w 2  # a local Dask cluster
    python -m shapcam.examples.data_valuation --executor processes  # a ProcessPoolExecutor
    python -m shapcam.examples.data_valuation --truncate 0          # no truncation (unbiased)

Every evaluation trains a model, so this is the kind of game executor= is for: the estimate is
the same, bit for bit, whichever executor runs it (the same seed gives the same permutations and
the same fixed-shape sum). Needs scikit-learn (``pip install shapcam[cluster]``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import shapcam


def make_problem(n_train=100, n_val=200, noise=0.1, seed=0):
    """Breast-cancer data (scikit-learn's copy of the UCI set), standardised and split; the labels
    of round(noise * n_train) training points are flipped. Returns (X_train, y_train, X_val,
    y_val, flipped indices)."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    if n_train + n_val > len(y):
        raise ValueError(f"n_train + n_val = {n_train + n_val}: the data has {len(y)} points")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    X = (X - X.mean(0)) / X.std(0)
    Xtr, ytr = X[:n_train], y[:n_train].copy()
    Xval, yval = X[n_train:n_train + n_val], y[n_train:n_train + n_val]
    flipped = np.sort(rng.choice(n_train, size=int(round(noise * n_train)), replace=False))
    ytr[flipped] = 1 - ytr[flipped]
    return Xtr, ytr, Xval, yval, flipped


class ValidationAccuracy:
    """v(S): validation accuracy of a logistic regression trained on the points in S. A subset
    with one class predicts it; the empty subset scores chance (1 / number of classes)."""

    def __init__(self, X_train, y_train, X_val, y_val, C=1.0):
        self.X_train, self.y_train = X_train, y_train
        self.X_val, self.y_val = X_val, y_val
        self.C = C
        self.classes = np.unique(np.concatenate([y_train, y_val]))

    def one(self, idx):
        from sklearn.linear_model import LogisticRegression

        if idx.size == 0:
            return 1.0 / len(self.classes)
        ys = self.y_train[idx]
        if np.all(ys == ys[0]):
            return float(np.mean(self.y_val == ys[0]))
        model = LogisticRegression(C=self.C, max_iter=500).fit(self.X_train[idx], ys)
        return float(model.score(self.X_val, self.y_val))

    def __call__(self, masks):
        return np.array([self.one(np.flatnonzero(m)) for m in np.asarray(masks)], dtype=np.float64)


def open_executor(kind, workers):
    """(executor, close) for --executor: none, processes, dask (a LocalCluster) or ray."""
    if kind == "none":
        return None, lambda: None
    if kind == "processes":
        import concurrent.futures as cf

        ex = cf.ProcessPoolExecutor(workers)
        return ex, ex.shutdown
    if kind == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)

        def close():
            client.close()
            cluster.close()

        return client, close
    if kind == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        return "ray", ray.shutdown
    raise ValueError(f"--executor: none, processes, dask or ray, got {kind!r}")


def value_data(n_train=100, n_val=200, noise=0.1, K=64, truncate=0.01, executor=None, seed=0,
               data_seed=0, progress=None):
    """Shapley values of the training points. Returns (ShapleyResult, problem dict, seconds,
    evaluations made here: fewer than n_evals when truncation skipped some, None on workers)."""
    Xtr, ytr, Xval, yval, flipped = make_problem(n_train, n_val, noise, data_seed)
    v = ValidationAccuracy(Xtr, ytr, Xval, yval)
    game = shapcam.TruncatedGame(v, n_train, tol=truncate, step=8) if truncate is not None \
        else shapcam.MaskGame(v, n_train)
    t = time.perf_counter()
    res = shapcam.estimate_shapley(game, K=K, seed=seed, executor=executor, progress=progress,
                                   batch_size=8 * (n_train - 1))
    secs = time.perf_counter() - t
    made = None
    if executor is None and truncate is not None:
        made = game.evaluated + 2
    problem = dict(X_train=Xtr, y_train=ytr, X_val=Xval, y_val=yval, flipped=flipped, value=v)
    return res, problem, secs, made


def checks(values, problem, frac=0.2, seed=0):
    """What a data-valuation user looks at: flipped labels among the lowest values, and validation
    accuracy after removing the most / least valuable fraction of points (or a random one)."""
    v, flipped = problem["value"], problem["flipped"]
    n = len(values)
    order = np.argsort(values)  # lowest first
    q = max(1, int(round(frac * n)))
    low = set(order[:q].tolist())
    found = len(low & set(flipped.tolist()))
    everyone = np.arange(n)
    rng = np.random.default_rng(seed)
    random_drop = rng.choice(n, size=q, replace=False)
    return {
        "flipped": len(flipped),
        f"flipped_in_lowest_{int(frac * 100)}pct": found,
        "detection_rate": found / max(1, len(flipped)),
        "chance_rate": q / n,
        "accuracy_all": v.one(everyone),
        f"accuracy_without_top_{int(frac * 100)}pct": v.one(np.setdiff1d(everyone, order[-q:])),
        f"accuracy_without_bottom_{int(frac * 100)}pct": v.one(np.setdiff1d(everyone, order[:q])),
        f"accuracy_without_random_{int(frac * 100)}pct": v.one(np.setdiff1d(everyone, random_drop)),
    }


def _positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {s}")
    return v


def _fraction(s):
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {s}")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=_positive, default=100, help="training points = players (100)")
    p.add_argument("--n-val", type=_positive, default=200, help="validation points (200)")
    p.add_argument("--noise", type=_fraction, default=0.1, help="fraction of flipped labels (0.1)")
    p.add_argument("-K", type=_positive, default=64, help="permutations (64)")
    p.add_argument("--truncate", type=float, default=0.01,
                   help="TMC tolerance in accuracy (0.01); a negative value turns truncation off")
    p.add_argument("--executor", default="none", choices=["none", "processes", "dask", "ray"])
    p.add_argument("-w", "--workers", type=_positive, default=2, help="workers for --executor (2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the numbers to this file")
    a = p.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        print("error: this example needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2
    truncate = a.truncate if a.truncate >= 0 else None
    if a.n_train < 2 or a.n_train + a.n_val > 569:
        print("error: need 2 <= --n-train and --n-train + --n-val <= 569 (the data's size)",
              file=sys.stderr)
        return 2
    executor, close = open_executor(a.executor, a.workers)
    try:
        res, problem, secs, made = value_data(a.n_train, a.n_val, a.noise, a.K, truncate, executor,
                                              a.seed, progress=None)
    finally:
        close()
    out = {"n_train": a.n_train, "K": res.n_permutations, "executor": a.executor,
           "workers": a.workers if a.executor != "none" else 1, "truncate": truncate,
           "seconds": round(secs, 2), "n_evals": res.n_evals, "evaluations_made": made,
           "efficiency_gap": float(res.efficiency_gap), "max_stderr": float(np.max(res.stderr))}
    out.update(checks(res.values, problem))
    print(f"Data Shapley: {a.n_train} training points, K = {res.n_permutations} permutations, "
          f"executor {a.executor}" + (f" ({a.workers} workers)" if a.executor != "none" else ""))
    print(f"  {secs:.1f} s, {res.n_evals} evaluations in the estimate"
          + (f", {made} made (truncation at {truncate})" if made is not None else ""))
    print(f"  values sum to v(all) - v(none) = {res.v_full - res.v_empty:.4f} "
          f"(gap {out['efficiency_gap']:.1e}); largest stderr {out['max_stderr']:.4f}")
    print(f"  flipped labels among the 20% lowest values: {out['flipped_in_lowest_20pct']} of "
          f"{out['flipped']} (chance: {out['chance_rate']:.0%})")
    print(f"  validation accuracy: all points {out['accuracy_all']:.3f}; without the 20% most "
          f"valuable {out['accuracy_without_top_20pct']:.3f}; without the 20% least valuable "
          f"{out['accuracy_without_bottom_20pct']:.3f}; without a random 20% "
          f"{out['accuracy_without_random_20pct']:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
