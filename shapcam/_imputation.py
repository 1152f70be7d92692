"""ROAD's noisy linear imputation on the host: the sparse system of each image, in NumPy and
SciPy only (no torch), so that worker processes can solve images side by side without loading
the deep-learning stack. shapcam.metrics.road_impute is the public entry."""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

# Noisy linear imputation's neighbours: each removed pixel is the weighted mean of its in-image
# neighbours, 1/6 for the 4 edge neighbours and 1/12 for the 4 diagonal ones (the reference code,
# which pytorch-grad-cam ships as NoisyLinearImputer).
ROAD_NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
                   (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6))


def nested_dissection(rows, cols, leaf=64):
    """An order of grid points (rows, cols) [U] that factors with little fill: split the points by
    a line across their longer side, order each half recursively, the line last (for the 8-point
    stencil a line of width 1 separates: points two rows apart are not neighbours)."""
    out, stack = [], [(np.arange(len(rows)), False)]
    while stack:  # explicit stack: halves pushed right then left, a separator after its halves
        ix, emit = stack.pop()
        if emit or len(ix) <= leaf:
            out.append(ix)
            continue
        r, c = rows[ix], cols[ix]
        key = r if r.max() - r.min() >= c.max() - c.min() else c
        mid = (int(key.min()) + int(key.max())) // 2
        left, sep, right = ix[key < mid], ix[key == mid], ix[key > mid]
        if not len(left) or not len(right):
            out.append(ix)
            continue
        stack += [(sep, True), (right, False), (left, False)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def grid_rank(H: int, W: int) -> np.ndarray:
    """[H * W]: each pixel's position in the nested-dissection order of the whole H x W grid.
    Restricted to any set of removed pixels it is still a dissection order (a separator line of
    the grid separates every subset), so one order per image size serves every mask."""
    order = nested_dissection(np.repeat(np.arange(H), W), np.tile(np.arange(W), H))
    rank = np.empty(H * W, dtype=np.int64)
    rank[order] = np.arange(H * W)
    rank.setflags(write=False)
    return rank


def imputation_system(keep, image, rank=None):
    """The sparse system of one imputation: unknowns u (the removed pixels, row-major, or by
    ``rank`` [H * W] when given), s_u x_u - sum_{removed v ~ u} w_uv x_v = sum_{kept k ~ u}
    w_uk image_k, s_u the weights of u's in-image neighbours. keep [H, W] bool; image [C, H, W]
    float64 NumPy. Returns (A CSC [U, U], b [U, C], removed flat indices [U], in that order)."""
    H, W = keep.shape
    flat_keep = keep.ravel()
    removed = np.flatnonzero(~flat_keep)
    if rank is not None:
        removed = removed[np.argsort(rank[removed], kind="stable")]
    U = len(removed)
    var = np.full(H * W, -1, dtype=np.int64)
    var[removed] = np.arange(U)
    r, c = removed // W, removed % W
    diag = np.zeros(U)
    b = np.zeros((U, image.shape[0]))
    img = image.reshape(image.shape[0], -1)
    rows, cols, vals = [], [], []
    for dr, dc, w in ROAD_NEIGHBOURS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        u = np.flatnonzero(inside)
        nb = rr[u] * W + cc[u]
        diag[u] += w
        known = flat_keep[nb]
        b[u[known]] += w * img[:, nb[known]].T
        rows.append(u[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full(int((~known).sum()), -w))
    rows.append(np.arange(U))
    cols.append(np.arange(U))
    vals.append(diag)
    A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(U, U))
    return A, b, removed


def solve_direct(keep, image):
    """The removed pixels' values [U, C] and their flat indices: a sparse LU of the system in the
    grid's nested-dissection order (SPD and diagonally dominant: no pivoting needed)."""
    A, b, removed = imputation_system(keep, image, grid_rank(*keep.shape))
    if not len(removed):
        return b, removed
    lu = splu(A, permc_spec="NATURAL", diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
    return lu.solve(b), removed


def _solve_group(args):
    image, keeps = args
    return [solve_direct(k, image) for k in keeps]


def solve_many(keeps, images, workers: int = 1):
    """solve_direct for each (keep [H, W], image [C, H, W]) pair, in order: in this process, or
    on ``workers`` spawned processes (SuperLU holds the GIL, so threads would not help). Runs of
    the same image (ROAD's percentiles of one image) go to a worker together, the image sent
    once."""
    groups = []
    for k, im in zip(keeps, images):
        if groups and (groups[-1][0] is im or np.array_equal(groups[-1][0], im)):
            groups[-1][1].append(k)
        else:
            groups.append((im, [k]))
    if workers <= 1 or len(keeps) < 2:
        parts = map(_solve_group, groups)
        return [r for part in parts for r in part]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if len(groups) < workers:  # one image: its systems split across the workers
        groups = [(im, [k]) for k, im in zip(keeps, images)]
    with ProcessPoolExecutor(max_workers=min(workers, len(groups)),
                             mp_context=mp.get_context("spawn")) as ex:
        return [r for part in ex.map(_solve_group, groups, chunksize=1) for r in part]
