"""The "regression" sampler: regression-adjusted Monte Carlo over paired coalitions (Witter, Liu &
Musco 2025, "Regression-adjusted Monte Carlo estimators for Shapley values and probabilistic
values"), with the border strata enumerated exactly and a cross-fitted additive surrogate.

The Shapley value splits by coalition size s (the maximum-sample-reuse form):

    phi_i = (v(N) - v(0)) / n + sum_{s=1}^{n-1} T_i(s),
    T_i(s) = E_{S uniform of size s}[ v(S) * w_i(S) ],   w_i(S) = 1/s if i in S, -1/(n-s) if not.

* Enumerated strata. Sizes 1 and n-1 always (2n evaluations: v({i}) and v(N minus i)), then
  2 and n-2, ... while the budget is large enough that a stratum would get more samples than it
  has coalitions (the "border trick" of KernelSHAP implementations); all of them when 2^n - 2
  evaluations fit, which is the exact answer. Their T_i(s) are exact.
* Sampled strata. Pairs (S, N minus S): the size s from q(s) ~ 1 / sqrt(s (n - s)) over the sizes
  left, S a uniform coalition of that size (the tail of a uniform permutation, below). A pair's
  estimate of the sampled part is the importance-weighted sum of r(S) w_i(S) / q(s) over S and its
  complement, where r = v - f is the residual of a surrogate f whose own T_i(s) are known in
  closed form.
* The surrogate is additive plus a function of the coalition's size,
  f(S) = v(0) + sum_{j in S} beta_j + sum_k c_k P_k((2|S| - n) / n) with sum(beta) = v(N) - v(0)
  and P_k the odd Legendre polynomials of degree <= 2 SIZE_TERMS - 1, fitted by weighted least
  squares (Fit) on the enumerated coalitions and on the pairs of the other folds (cross-fitting,
  FOLDS folds by pair index). A function of the size alone has T_i(s) = 0 at every size (w_i
  averages to zero over the coalitions of a size), so its terms cost nothing in the closed form
  and only take out of the residual what varies with the size: the odd part of v's growth with
  |S| beyond the linear, which is most of v(S) - v(N minus S) in games of high-order
  interactions (sums of unanimity games: MSE 4x lower at n = 100). A pair's estimate uses a
  surrogate fitted without it, so it is unbiased whatever the fit; the pairs' estimates are
  averaged, and their spread gives the standard error.

Every pair's estimate sums to v(N) - v(0) (w sums to zero over the players for every S, and the
surrogate's part sums to zero over the sampled strata), so efficiency is exact.

The contract (csrc/include/shapcam/pairs.h): pair j's size s_j is drawn from word 0 of
``philox(ctr = (0, j & 0xffffffff, j >> 32, 1), key(seed))`` (the fourth counter word 1 keeps
these draws apart from the permutations', which use 0) by integer thresholds of q; its smaller
side, of t_j = min(s_j, n - s_j) players, is the players at the last t_j positions of permutation
j of the plain design (csrc/include/shapcam/permutation.h), which its first t_j Fisher-Yates steps
fix (ceil(t_j / 4) Philox blocks instead of (n - 1) / 4); S_j is that side when 2 s_j <= n, else
the rest. Bit-identical in every engine.

The estimate is computed on the host in float64 from the values in evaluation order, in fixed
blocks, so it does not depend on batch_size, the engine or the device the game runs on. Its
per-pair work (the fit's statistics, the residual moments) runs in native ops
(csrc/cpu/regression_cpu.cpp) whose NumPy twins here give the same bits: sums run in a fixed
order, and the fit's Gram matrices are made of integer counts where n <= COUNTS_MAX_PLAYERS.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import combinations, islice

import numpy as np

from . import _engine, ops, reference

FOLDS = 8
# Players beyond which the sampler is not offered: the fit holds FOLDS + 1 Gram matrices of
# (n - 1)^2 float64 and solves them at every check.
MAX_PLAYERS = 1000
# q(s) ~ (s (n - s))^-SIZE_EXPONENT over the sampled sizes: 1/2 balances the importance weights
# spread over sizes (measured over the benchmark suite against 0.35, 3/4 and 1 = the kernel:
# best or within noise on every game).
SIZE_EXPONENT = 0.5
# A stratum is enumerated when its share of the budget would draw at least ENUM_RATIO times as
# many coalitions as it has (drawn with replacement, such a sample repeats many of them;
# enumerated, the stratum has no variance), and MIN_PAIRS pairs are left to sample. Measured on
# the suite: 1/2 lowers the MSE by 10-20% at n <= 16 but raises it by 17-22% at n = 100 (the
# 9900 coalitions of sizes 2 and 98 cost a fifth of a 500n budget and carry little of the
# residual); 1.5 is worse at n = 12.
ENUM_RATIO = 1.0
MIN_PAIRS = 2 * FOLDS
# Odd Legendre polynomials P_1, P_3, ... of x = (2|S| - n) / n in the surrogate (at most one per
# distinct |x| > 0, ceil(n / 2) - 1). Only odd ones: a pair's estimate sees v(S) - v(N minus S),
# and x(N minus S) = -x(S). Measured on the suite: P_1..P_7 lower the MSE 4x on soum-100, 2x on
# mlp-16, 5-15% on soum-30 and the trees; P_3..P_7 without P_1 do nothing on soum-100 (the
# additive part's sum is pinned to v(N) - v(0), so P_1 is the one term of the odd linear span it
# lacks); one-hot sizes (a free function of the size) are worse below 50n (a term per size).
SIZE_TERMS = 4
# Coalitions enumerated in one block (masks built from itertools.combinations), and at most in
# all (their masks are kept, bit-packed; every coalition is enumerated only up to this many).
ENUM_BLOCK = 1 << 14
ENUM_MAX = 1 << 22
# What a run keeps of its pairs (their values and sets: the estimate is recomputed from all of
# them) when nothing bounds its budget (K=None with tol / rtol / max_seconds only): it stops,
# stop_reason "memory", before the pairs would hold more than this.
MAX_KEPT_BYTES = 1 << 30


def pairs_within(n: int, mw: int, max_bytes: int = None) -> int:
    """Pairs whose kept values ([2, mw] float64) and sets (n bits) fit in max_bytes
    (MAX_KEPT_BYTES by default)."""
    per_pair = 16 * mw + (n + 7) // 8
    return max(MIN_PAIRS, (MAX_KEPT_BYTES if max_bytes is None else max_bytes) // per_pair)
# Players up to which the fit's Gram matrices are made of integer counts per fold and coalition size
# (pair_counts: exact in any order, a few adds per pair instead of p^2 / 2 multiply-adds; the
# counts hold FOLDS (n / 2 + 1) (n - 1)^2 int64, 8.4 MB at 64 players); beyond, the Gram matrices are
# summed in float64 pair by pair (pair_gram).
COUNTS_MAX_PLAYERS = 64
# A partial block of B pairs with B p^2 <= DIRECT_GRAM_SHARE FOLDS (n / 2 + 1) (n - 1)^2 (p = n - 1 +
# k) has its Gram matrices summed pair by pair (pair_gram, p^2 / 2 multiply-adds a pair) instead of
# counted: the counts' fixed cost (zeroing, converting and weighting FOLDS (n / 2 + 1) (n - 1)^2
# int64, ~0.7 ms for a first run at n = 30) is more up to ~2000 pairs there (measured, first runs
# at n = 30: K = 16 0.90 -> 0.17 ms, K = 128 1.16 -> 0.56 ms; K = 256, 3247 pairs, counted:
# 0.74 ms against 1.23 summed).
DIRECT_GRAM_SHARE = 20


def kernel_mass(n, s):
    """Shapley-kernel mass of coalition size s (the sum of the kernel over its C(n, s) coalitions)."""
    s = np.asarray(s, dtype=np.float64)
    return (n - 1) / (s * (n - s))


@dataclass(frozen=True)
class Plan:
    """Which sizes are enumerated exactly, which are sampled, and with what probabilities."""

    n: int
    enumerated: tuple
    mid: tuple

    @property
    def exact(self) -> bool:
        return not self.mid

    # Derived once per plan (a plan is immutable; the arrays are read-only).
    @functools.cached_property
    def n_enumerated(self) -> int:
        return sum(math.comb(self.n, s) for s in self.enumerated)

    @functools.cached_property
    def q(self) -> np.ndarray:
        mid = np.asarray(self.mid, dtype=np.float64)
        w = (mid * (self.n - mid)) ** -SIZE_EXPONENT
        q = w / w.sum()
        q.setflags(write=False)
        return q

    @functools.cached_property
    def thresholds(self) -> np.ndarray:
        """uint64 thresholds of a 32-bit word: size index = number of thresholds <= word."""
        c = np.cumsum(self.q)[:-1]
        t = np.minimum(np.floor(c * 2.0**32), 2.0**32).astype(np.uint64)
        t.setflags(write=False)
        return t

    @functools.cached_property
    def qpos(self) -> np.ndarray:
        """[n + 1]: q by size, 0 at the sizes not sampled."""
        out = np.zeros(self.n + 1)
        out[list(self.mid)] = self.q
        out.setflags(write=False)
        return out

    @functools.cached_property
    def pair_weights(self) -> np.ndarray:
        """[n + 1]: a pair's least-squares weight in the fit (both rows) by size; 0 at the sizes
        not sampled. A row of size s drawn with probability q(s), with a mean of 1 per row: a
        pair's share of the estimate's variance is E[|w(S)|^2 d(S)^2] / (4 q(s)) summed over sizes,
        |w(S)|^2 = n / (s (n - s)), d the residual's v(S) - v(N minus S); a row drawn with
        probability q(s) stands for 1 / q(s) of its size, so 1 / (s (n - s) q(s)^2) weighs each row
        by what its residual costs."""
        n, qpos = self.n, self.qpos
        mid = np.asarray(self.mid)
        out = np.zeros(n + 1)
        if mid.size:
            qm = qpos[mid]
            c = 1.0 / (1.0 / (mid * (n - mid) * qm)).sum()  # E_q[weight] = 1
            out[mid] = 2.0 * (c / (mid * (n - mid) * qpos[mid] ** 2))
        out.setflags(write=False)
        return out

    def as_state(self):
        return {"n": self.n, "enumerated": list(self.enumerated), "mid": list(self.mid)}

    def __hash__(self):  # kept: a plan keys design_cache and the lru caches, ~8 lookups a run
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = hash((self.n, self.enumerated, self.mid))
        return h


@functools.lru_cache(maxsize=64)
def make_plan(n: int, avail) -> Plan:
    """The plan for n >= 2 players and `avail` evaluations beyond the two endpoints (None: not
    known in advance, e.g. a run stopped by tol alone: the border strata only). Kept for the next
    run with the same ones (a plan is immutable; its derived arrays are computed once)."""
    sizes = list(range(1, n))
    if n <= 62 and avail is not None and 2**n - 2 <= min(avail, ENUM_MAX):
        return Plan(n, tuple(sizes), ())
    enum = {1, n - 1}
    cost = len(enum) * n
    d = 2
    while avail is not None and d <= n - d:
        c = math.comb(n, d) * (1 if d == n - d else 2)
        rest = np.arange(d, n - d + 1)
        share = kernel_mass(n, d) / kernel_mass(n, rest).sum() * (1 if d == n - d else 2)
        if cost + c + 2 * MIN_PAIRS > avail or cost + c > ENUM_MAX or \
                (avail - cost) * share < ENUM_RATIO * c:
            break
        enum |= {d, n - d}
        cost += c
        d += 1
    return Plan(n, tuple(sorted(enum)), tuple(s for s in sizes if s not in enum))


def plan_from_state(st) -> Plan:
    return Plan(int(st["n"]), tuple(int(s) for s in st["enumerated"]), tuple(int(s) for s in st["mid"]))


def pair_sizes(seed: int, j0: int, j1: int, plan: Plan) -> np.ndarray:
    """Sizes s_j of pairs j0..j1-1 (int64)."""
    word = reference.philox_block(seed, np.arange(j0, j1, dtype=np.uint64), 0, lane=1)[:, 0]
    word = word.astype(np.uint64)
    idx = np.searchsorted(plan.thresholds, word, side="right")
    return np.asarray(plan.mid, dtype=np.int64)[idx]


_ROUTED = {}  # engine asked for -> (engine that computes, native module or None): fixed per process


def _routed(engine):
    got = _ROUTED.get(engine) if engine is None or isinstance(engine, str) else None
    if got is None:
        eng = ops.route(engine).engine  # raises for an unknown or missing engine
        got = (eng, _engine.native() if eng == "native" else None)
        if engine is None or isinstance(engine, str):
            _ROUTED[engine] = got
    return got


def _native_for(engine):
    """The native module when `engine` routes host work to it, else None (the NumPy twin)."""
    return _routed(engine)[1]


def _mid_array(plan: Plan) -> np.ndarray:
    return np.asarray(plan.mid, dtype=np.int64)


def pair_sets(seed: int, j0: int, j1: int, plan: Plan, engine=None) -> np.ndarray:
    """S_j of pairs j0..j1-1 (the first coalition of each pair): [j1 - j0, n] bool.
    (csrc/include/shapcam/pairs.h: the smaller side is the players at the last min(s, n - s)
    positions of plain permutation j.)"""
    n = plan.n
    mod = _native_for(engine)
    if mod is not None:
        return np.unpackbits(pair_packed(seed, j0, j1, plan, engine), axis=1, count=n).astype(bool)
    rank = ops.ranks(seed, j0, j1, n, reference.PLAIN, engine="reference")
    s = pair_sizes(seed, j0, j1, plan)[:, None]
    small = 2 * s <= n
    side = rank >= n - np.where(small, s, n - s)
    return side == small


def pair_packed(seed: int, j0: int, j1: int, plan: Plan, engine=None) -> np.ndarray:
    """pair_sets bit-packed (numpy.packbits along the players): [j1 - j0, ceil(n / 8)] uint8."""
    mod = _native_for(engine)
    if mod is None:
        return np.packbits(pair_sets(seed, j0, j1, plan, engine), axis=1)
    out = np.empty((j1 - j0, (plan.n + 7) // 8), dtype=np.uint8)
    mod.regression_pairs_cpu(ops.check_seed(seed), j0, j1, plan.n, plan.thresholds, _mid_array(plan),
                             None, out, None)
    return out


def pair_masks(seed: int, j0: int, j1: int, plan: Plan, engine=None, packed: bool = False):
    """Coalitions of pairs j0..j1-1 in evaluation order (S_j0, its complement, S_j0+1, ...):
    [2 (j1 - j0), n] bool; with packed=True, (masks, pair_packed(...)) from the same draw."""
    mod = _native_for(engine)
    out = np.empty((2 * (j1 - j0), plan.n), dtype=bool)
    if mod is not None:
        pk = np.empty((j1 - j0, (plan.n + 7) // 8), dtype=np.uint8) if packed else None
        mod.regression_pairs_cpu(ops.check_seed(seed), j0, j1, plan.n, plan.thresholds,
                                 _mid_array(plan), out, pk, None)
        return (out, pk) if packed else out
    S = pair_sets(seed, j0, j1, plan, engine)
    out[0::2] = S
    out[1::2] = ~S
    return (out, np.packbits(S, axis=1)) if packed else out


# Bytes the design cache (DesignCache) may hold; 0 turns it off.
DESIGN_CACHE_BYTES = 64 << 20


class DesignCache:
    """A bounded LRU of the regression sampler's work that depends on (engine, seed, plan) alone,
    not on the game's values: the pairs' coalitions (their masks and packed rows, 2 n + n / 8 bytes
    a pair) and the integer counts behind the fit's Gram matrices, with those matrices
    (Fit.estimate). A run with the seed, players and budget of an earlier one — explaining many
    inputs one after another with the default seed — takes them from here instead of drawing and
    counting again. What is kept is a pure function of its key and read-only, so a run gives the
    same bits with or without it.
    A key is kept from its second request on (the first only remembers it): runs that never
    repeat a seed — each with a seed of its own — keep nothing, and pay nothing for copies and
    fresh memory (+10-30% a run at n = 30 when every run was kept). ``limit`` bytes at most
    (DESIGN_CACHE_BYTES; 0: nothing is kept); thread-safe.
    ``shapcam.regression.design_cache.clear()`` empties it."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._items = OrderedDict()  # key -> [value, bytes]
        self._bytes = 0
        self._lock = threading.Lock()
        self._seen = OrderedDict()  # keys asked for once (SEEN_KEYS at most)
        self._admit = set()  # keys asked for again: what put / extend may keep
        self.hits = self.misses = 0  # lookups answered / not, since the last clear()

    SEEN_KEYS = 1024

    def clear(self):
        with self._lock:
            self._items.clear()
            self._seen.clear()
            self._admit.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def _missed(self, key):
        self.misses += 1
        if key in self._seen:
            self._admit.add(key)
            return
        self._seen[key] = None
        if len(self._seen) > self.SEEN_KEYS:
            self._admit.discard(self._seen.popitem(last=False)[0])

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._missed(key)
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item[0]

    def admits(self, key) -> bool:
        """Whether put(key, ...) would keep a value (the key was asked for before)."""
        with self._lock:
            return key in self._admit and self.limit > 0

    def put(self, key, value, nbytes: int):
        with self._lock:
            if key in self._admit:
                self._put(key, value, int(nbytes))

    def _drop(self, key):
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]

    def _put(self, key, value, nbytes):
        self._drop(key)
        if nbytes > self.limit:
            return
        self._items[key] = [value, nbytes]
        self._bytes += nbytes
        while self._bytes > self.limit:
            self._bytes -= self._items.popitem(last=False)[1][1]

    def rows(self, key, j0: int, j1: int):
        """Rows j0..j1-1 of a row store (extend), read-only, or None if it does not hold them."""
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0][1] < j1:
                self._missed(key)
                return None
            self.hits += 1
            self._items.move_to_end(key)
            view = item[0][0][j0:j1]
        view.setflags(write=False)
        return view

    def extend(self, key, j0: int, rows: np.ndarray):
        """Add rows j0.. to the row store under key where they reach past its end without a gap
        (a store starts at row 0; the rows it holds already are the same ones); its buffer grows
        by doubling, so a run that draws in many chunks copies O(rows) in all."""
        with self._lock:
            item = self._items.get(key)
            have = item[0][1] if item is not None else 0
            need = j0 + rows.shape[0]
            if j0 > have or need <= have or key not in self._admit:
                return
            buf = item[0][0] if item is not None else None
            if buf is None or buf.shape[0] < need:
                size = max(need, 2 * have)
                if size * rows.shape[1] * rows.dtype.itemsize > self.limit:  # would not be kept
                    self._drop(key)
                    return
                grown = np.empty((size, rows.shape[1]), dtype=rows.dtype)
                if have:
                    grown[:have] = buf[:have]
                buf = grown
            buf[have:need] = rows[have - j0:]
            self._put(key, (buf, need), buf.nbytes)


design_cache = DesignCache(DESIGN_CACHE_BYTES)
if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock
    os.register_at_fork(after_in_child=lambda: setattr(design_cache, "_lock", threading.Lock()))


def _engine_key(engine) -> str:
    return _routed(engine)[0]


def draw_pairs(seed: int, j0: int, j1: int, plan: Plan, engine=None, copy: bool = True):
    """pair_masks(seed, j0, j1, plan, engine, packed=True), taken from design_cache where an
    earlier draw with the same engine, seed and plan left them (the masks a copy: the caller may
    write into them — copy=False: maybe design_cache's read-only rows, for a caller that copies
    them anyway; the packed rows read-only), and left there for the next one."""
    n = plan.n
    key = ("pairs", _engine_key(engine), int(seed), plan)
    if design_cache.limit > 0:
        pk = design_cache.rows(key, j0, j1)
        pm = design_cache.rows(key + ("masks",), j0, j1)
        if pk is not None and pm is not None:
            pm = pm.reshape(2 * (j1 - j0), n)
            return (pm.copy() if copy else pm), pk
    masks, pk = pair_masks(seed, j0, j1, plan, engine, packed=True)
    if design_cache.limit > 0:
        design_cache.extend(key, j0, pk)
        design_cache.extend(key + ("masks",), j0, masks.reshape(j1 - j0, 2 * n))
    return masks, pk


@functools.lru_cache(maxsize=4)
def _enumerated_packed(plan: Plan) -> np.ndarray:
    """Every enumerated coalition, bit-packed, built once by streaming itertools.combinations
    (at most ENUM_MAX rows: n / 8 bytes each)."""
    n = plan.n
    parts = []
    for s in plan.enumerated:
        it = combinations(range(n), s)
        while True:
            idx = np.array(list(islice(it, ENUM_BLOCK)), dtype=np.int64).reshape(-1, s)
            if idx.shape[0] == 0:
                break
            m = np.zeros((idx.shape[0], n), dtype=bool)
            m[np.arange(idx.shape[0])[:, None], idx] = True
            parts.append(np.packbits(m, axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, (n + 7) // 8), dtype=np.uint8)


def enumerated_masks(plan: Plan, r0: int, r1: int) -> np.ndarray:
    """Rows r0..r1-1 of the enumerated coalitions: each enumerated size in increasing order, its
    subsets in itertools.combinations order. [r1 - r0, n] bool (a fresh array: the game may
    write into it; small plans copy theirs from a kept one)."""
    if plan.n_enumerated * plan.n <= 1 << 16:
        return _enumerated_bool(plan)[r0:r1].copy()
    return np.unpackbits(_enumerated_packed(plan)[r0:r1], axis=1, count=plan.n).astype(bool)


@functools.lru_cache(maxsize=8)
def _enumerated_bool(plan: Plan) -> np.ndarray:
    out = np.unpackbits(_enumerated_packed(plan), axis=1, count=plan.n).astype(bool)
    out.setflags(write=False)
    return out


def _enumerated_chunk(plan: Plan, r0: int, r1: int, nE: int):
    """What enumerated rows r0..r1-1 (of nE) give the estimate before their values are known:
    (W [rows, n] = w_i(S) / C(n, |S|), AW [rows, p] = the surrogate's features A times the rows'
    kernel weights wt (a mean of 1 per row), z_last [rows], and A^T (A wt)). Small plans keep
    theirs (a run's fit asks once per check)."""
    if (r1 - r0) * plan.n <= 1 << 16:
        return _enumerated_chunk_cached(plan, r0, r1, nE)
    return _enumerated_chunk_of(plan, r0, r1, nE)


def _enumerated_chunk_of(plan, r0, r1, nE):
    n = plan.n
    combs = np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)
    Z = enumerated_masks(plan, r0, r1)
    s = Z.sum(1)
    comb = combs[s]
    W = _weights_w(Z, s, n) / comb[:, None]
    last = Z[:, -1].astype(np.float64)
    A = np.concatenate([Z[:, :-1] - last[:, None], size_features(n, s)], 1)
    # the kernel within the enumerated rows, normalised to a mean of 1 per row
    wt = kernel_mass(n, s) / comb * (nE / kernel_mass(n, np.asarray(plan.enumerated)).sum())
    AW = A * wt[:, None]
    out = (W, AW, last, A.T @ AW)
    for a in out:
        a.setflags(write=False)
    return out


def enumerated_terms(Y, W, AW, last, v0, D, Tb, hE, engine=None):
    """Add one chunk of enumerated rows (values Y [R, mw]; _enumerated_chunk's W, AW, last) to the
    estimate's exact part in place: Tb [n, mw] += W^T Y and hE [p, mw] (None: skipped) += AW^T t,
    t = (Y - v0) - last D; each element adds its terms one at a time in row order onto what it
    holds, so the native op (csrc/cpu/regression_cpu.cpp) and this NumPy twin give the same bits."""
    R, mw = Y.shape
    n, p = W.shape[1], AW.shape[1]
    mod = _native_for(engine)
    if mod is not None:
        mod.regression_enum_cpu(np.ascontiguousarray(Y, dtype=np.float64), R, n, p, mw, W, AW, last,
                                np.ascontiguousarray(v0, dtype=np.float64),
                                np.ascontiguousarray(D, dtype=np.float64), Tb, hE)
        return
    step = max(1, (1 << 20) // max(1, max(n, p) * mw))  # rows a pass: bounded memory, the same order
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        y = Y[r0:r1]
        Tb[:] = np.cumsum(np.concatenate([Tb[None], W[r0:r1, :, None] * y[:, None, :]]), axis=0)[-1]
        if hE is not None:
            t = (y - v0[None, :]) - last[r0:r1, None] * D[None, :]
            hE[:] = np.cumsum(np.concatenate([hE[None], AW[r0:r1, :, None] * t[:, None, :]]), axis=0)[-1]


_enumerated_chunk_cached = functools.lru_cache(maxsize=8)(_enumerated_chunk_of)


def size_terms(n):
    """How many size features the surrogate of n players has."""
    return max(0, min(SIZE_TERMS, (n + 1) // 2 - 1))


@functools.lru_cache(maxsize=32)
def _size_table(n, scale=1.0):
    """scale * size_features(n, 0..n), kept read-only: [n + 1, size_terms(n)]."""
    t = size_features(n, np.arange(n + 1))
    if scale != 1.0:
        t = scale * t
    t.setflags(write=False)
    return t


@functools.lru_cache(maxsize=64)
def _fold_rows(B):
    """[FOLDS, 1, 1] float64: how many of a block's B rows each fold has (rows f, f + FOLDS, ...)."""
    c = ((B - np.arange(FOLDS) + FOLDS - 1) // FOLDS).astype(np.float64)[:, None, None]
    c.setflags(write=False)
    return c


@functools.lru_cache(maxsize=16)
def _strict_upper(p):
    """[p, p] bool, read-only: True above the diagonal."""
    m = np.triu(np.ones((p, p), dtype=bool), 1)
    m.setflags(write=False)
    return m


def _mirror_upper(G):
    """G [..., p, p] with zeros below the diagonal (the Gram sums fill the upper triangle) made
    symmetric: the same numbers as triu(G) + triu(G, 1)^T, at half the cost (8 vs 18 us for
    8 x 33 x 33: a first run's fixed cost)."""
    return G + np.swapaxes(np.where(_strict_upper(G.shape[-1]), G, 0.0), -1, -2)


def size_features(n, s):
    """[len(s), size_terms(n)] float64: P_1, P_3, ... (odd Legendre) of x = (2 s - n) / n."""
    k = size_terms(n)
    x = (2.0 * np.asarray(s, dtype=np.float64) - n) / n
    out = np.empty((x.shape[0], k))
    # Bonnet's recursion (m + 1) P_{m+1} = (2m + 1) x P_m - m P_{m-1}, keeping the odd degrees
    prev, cur = np.ones_like(x), x
    for m in range(1, 2 * k):
        if m % 2:
            out[:, m // 2] = cur
        prev, cur = cur, ((2 * m + 1) * x * cur - m * prev) / (m + 1)
    return out


# Relative ridge of the fit's normal equations: directions no row has seen (a size feature before
# pairs of enough sizes, a player never apart from another) get a coefficient near 0 instead of
# making the system singular; elsewhere the fit moves by ~1e-10 relative. Any surrogate keeps the
# estimate unbiased, so this only trades a negligible fit error for a solve that always works.
RIDGE = 1e-10


def _solve_psd(G, h):
    """Solutions of the stacked positive semi-definite systems G [F, p, p] x = h [F, p, mw], with
    RIDGE x the mean diagonal added to each diagonal: one batched LU solve instead of F
    least-squares SVDs (a 5n run at n = 1000, 3 outputs: 8.5 s -> 0.9 s)."""
    try:
        return np.linalg.solve(_ridged(G), h)
    except np.linalg.LinAlgError:  # not expected with the ridge; kept as the last resort
        return np.stack([np.linalg.lstsq(G[f], h[f], rcond=None)[0] for f in range(G.shape[0])])


def _ridge(G):
    """[F]: each system's ridge, RIDGE x its mean diagonal (x 1 where that is not positive), the
    trace summed in order (as the native Cholesky does)."""
    p = G.shape[-1]
    if p == 0:
        return np.full(G.shape[0], RIDGE)
    scale = np.cumsum(np.diagonal(G, axis1=1, axis2=2), axis=1)[:, -1] / float(p)
    return RIDGE * np.where(scale > 0, scale, 1.0)


def _ridged(G):
    """G [F, p, p] with _ridge(G) added to each diagonal."""
    return G + _ridge(G)[:, None, None] * np.eye(G.shape[-1])[None]


def cholesky(A, engine=None):
    """(U [F, p, p], ok [F] bool): A_f + lam_f I = U_f^T U_f for the symmetric A [F, p, p] (its
    upper triangle read), lam_f = RIDGE x the mean diagonal (1 where that is not positive), ok
    False where a pivot was not positive; U mirrored below the diagonal (cholesky_solve's native
    op reads its columns there). Sums run over k in order from the first term, so the
    native op (csrc/cpu/regression_cpu.cpp) and this NumPy twin give the same bits."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    F, p = A.shape[0], A.shape[-1]
    mod = _native_for(engine)
    U = np.zeros((F, p, p))
    if mod is not None:
        ok = np.empty(F, dtype=np.uint8)
        mod.regression_cholesky_cpu(A, F, p, RIDGE, U, ok)
        return U, ok.astype(bool)
    ok = np.ones(F, dtype=bool)
    if p == 0:
        return U, ok
    lam = _ridge(A)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(p):
            if j:
                s = A[:, j, j:] - np.cumsum(U[:, :j, j:] * U[:, :j, j:j + 1], axis=1)[:, -1]
            else:
                s = A[:, 0, :].copy()
            s[:, 0] += lam
            ok &= s[:, 0] > 0
            r = np.sqrt(np.where(ok, s[:, 0], 1.0))
            U[:, j, j] = r
            U[:, j, j + 1:] = s[:, 1:] / r[:, None]
            U[:, j + 1:, j] = U[:, j, j + 1:]  # the mirror, as the native op writes it
    return U, ok


def cholesky_solve(U, h, engine=None):
    """x [F, p, mw] = (U_f^T U_f)^-1 h_f from cholesky's U, by columns of U in the order the
    native op takes (the same bits): U^T y = h from the first column, U x = y from the last."""
    U = np.ascontiguousarray(U, dtype=np.float64)
    h = np.ascontiguousarray(h, dtype=np.float64)
    F, p, mw = h.shape
    mod = _native_for(engine)
    if mod is not None:
        x = np.empty((F, p, mw))
        mod.regression_cholsolve_cpu(U, F, p, mw, h, x)
        return x
    y = h.copy()
    for k in range(p):
        y[:, k] /= U[:, k, k][:, None]
        y[:, k + 1:] -= U[:, k, k + 1:, None] * y[:, k, None, :]
    for k in range(p - 1, -1, -1):
        y[:, k] /= U[:, k, k][:, None]
        y[:, :k] -= U[:, :k, k, None] * y[:, k, None, :]
    return y


def _factor_psd(G, engine=None):
    """The fit's systems G [F, p, p] (positive semi-definite) made ready to solve, with the RIDGE
    of _solve_psd: (U, bad, G_bad) — cholesky's factors and, for the folds whose factor failed
    (not expected with the ridge), their G for a least-squares solve. It depends on the design
    alone, so design_cache keeps it for the next run of a seed (solve_factored: a few us a run at
    n = 30, against ~45 for an LU solve)."""
    U, ok = cholesky(G, engine)
    if ok.all():
        return U, None, None
    bad = np.flatnonzero(~ok)
    return U, bad, G[bad].copy()


def solve_factored(fac, h, engine=None):
    """The solutions x [F, p, mw] of the systems _factor_psd made ready, for right sides h."""
    U, bad, Gb = fac if len(fac) == 3 else (fac[0], None, None)
    x = cholesky_solve(U, h, engine)
    if bad is not None:
        for i, f in enumerate(bad):
            x[f] = np.linalg.lstsq(Gb[i], h[f], rcond=None)[0]
    return x


def _weights_w(Z, s, n):
    """w_i(S) for rows Z [B, n] bool of sizes s: 1/s in S, -1/(n-s) out."""
    s = s.astype(np.float64)[:, None]
    return np.where(Z, 1.0 / s, -1.0 / (n - s))


def pair_moments(packed, n, F, dY, beta, sterm, qpos, engine=None, higher=False):
    """The pairs' residual moments of one block of the estimate: (U, V) [F, n, mw], with row b of
    the block in fold b % F, d_b = ((dY_b - sum_i (z_i ? beta_i : -beta_i)) - sterm[s_b]) /
    q(s_b) the residual's v(S) - v(N minus S) over q, w_i = 1/s in S and -1/(n - s) out:
    U_f = sum over fold f's rows of w d, V_f = sum of (w w)(d d). packed [B, ceil(n / 8)] (the
    sets S_b), dY [B, mw], beta [F, n, mw], sterm [F, n + 1, mw] (the size terms' difference by
    size), qpos [n + 1]. Every sum runs in row order (over the players in order for d), so the
    native op (csrc/cpu/regression_cpu.cpp) and this NumPy twin give the same bits. higher=True
    (the twin alone; the native estimate_tail asks its op): also U3_f = sum of (w d)((w w)(d d))
    and U4_f = sum of ((w w)(d d))^2."""
    B, mw = dY.shape
    mod = None if higher else _native_for(engine)
    if mod is not None:
        U = np.empty((F, n, mw))
        V = np.empty((F, n, mw))
        mod.regression_moments_cpu(np.ascontiguousarray(packed), B, n, F, mw, np.ascontiguousarray(dY),
                                   np.ascontiguousarray(beta), np.ascontiguousarray(sterm),
                                   np.ascontiguousarray(qpos, dtype=np.float64), U, V)
        return U, V
    Z = np.unpackbits(packed, axis=1, count=n).astype(bool)
    s = Z.sum(1)
    fold = np.arange(B) % F
    bsel = beta[fold]
    acc = np.cumsum(np.where(Z[:, :, None], bsel, -bsel), axis=1)[:, -1, :]
    D = ((dY - acc) - sterm[fold, s]) / qpos[s][:, None]
    W = _weights_w(Z, s, n)
    U, V = np.zeros((F, n, mw)), np.zeros((F, n, mw))
    U3, U4 = np.zeros((F, n, mw)), np.zeros((F, n, mw))
    for f in range(min(F, B)):
        t = W[f::F, :, None] * D[f::F, None, :]
        tt = (W[f::F] * W[f::F])[:, :, None] * (D[f::F] * D[f::F])[:, None, :]
        U[f] = np.cumsum(t, axis=0)[-1]
        V[f] = np.cumsum(tt, axis=0)[-1]
        if higher:
            U3[f] = np.cumsum(t * tt, axis=0)[-1]
            U4[f] = np.cumsum(tt * tt, axis=0)[-1]
    return (U, V, U3, U4) if higher else (U, V)


def estimate_tail(packed, P_vals, M, n, F, k, PB, sol, D, Tb, L, X2, qpos, engine=None, m4=False):
    """(mean, m2, m4) [n, mw] over the M pairs' estimates, from the folds' solutions sol [F, n - 1 + k,
    mw]: each fold's additive part beta (sol's first n - 1 rows; the last player's D - their sum,
    D = v(N) - v(0)), its exact share of the L sampled sizes added to Tb [n, mw] (the base), its
    size terms' difference by size X2 [n + 1, k] @ c; then per block of PB pairs (packed [M, n / 8],
    values P_vals [2M, mw]) the residual moments (pair_moments) and the block's mean and M2 of the
    pairs' estimates psi_j = base_f + w(S_j) d_j / 2, merged block by block (reference.merge_block);
    m4 (None unless asked: it costs ~5 ns a pair), the sum over the pairs of (psi_j - mean)^4, from
    each fold's power sums of w d over all blocks (the pooled kurtosis that interval_dof takes).
    Every sum runs in order from its first
    term, so the native op (csrc/cpu/regression_cpu.cpp) and this NumPy twin give the same bits."""
    mw = sol.shape[2]
    mod = _native_for(engine)
    if mod is not None:
        mean, m2, q4 = np.empty((n, mw)), np.empty((n, mw)), np.empty((n, mw)) if m4 else None
        mod.regression_tail_cpu(np.ascontiguousarray(packed), M, n, F, k, mw, PB,
                                np.ascontiguousarray(P_vals[:2 * M], dtype=np.float64),
                                np.ascontiguousarray(sol), np.ascontiguousarray(D, dtype=np.float64),
                                np.ascontiguousarray(Tb), int(L),
                                np.ascontiguousarray(X2, dtype=np.float64),
                                np.ascontiguousarray(qpos, dtype=np.float64), mean, m2, q4)
        return mean, m2, q4
    beta = np.empty((F, n, mw))
    beta[:, :-1] = sol[:, :n - 1]
    beta[:, -1] = D[None, :] - np.cumsum(sol[:, :n - 1], axis=1)[:, -1]
    base = Tb[None] + (L * (n * beta - np.cumsum(beta, axis=1)[:, -1:])) / (n * (n - 1))
    if k:
        sterm = np.cumsum(X2[None, :, :, None] * sol[:, None, n - 1:, :], axis=2)[:, :, -1]
    else:
        sterm = np.zeros((F, n + 1, mw))
    mean = m2 = None
    count = 0
    for j0 in range(0, M, PB):
        j1 = min(M, j0 + PB)
        B = j1 - j0
        Y = P_vals[2 * j0:2 * j1]
        U, V, U3, U4 = pair_moments(packed[j0:j1], n, F, Y[0::2] - Y[1::2], beta, sterm, qpos,
                                    engine, higher=True) if m4 else \
            pair_moments(packed[j0:j1], n, F, Y[0::2] - Y[1::2], beta, sterm, qpos, engine) + (None, None)
        cnt = _fold_rows(B)
        if m4:
            A = [U, V, U3, U4] if j0 == 0 else [a + u for a, u in zip(A, (U, V, U3, U4))]
            ctot = cnt if j0 == 0 else ctot + cnt
        bm = (np.cumsum(cnt * base, axis=0)[-1] + 0.5 * np.cumsum(U, axis=0)[-1]) / B
        dev = base - bm[None]
        bm2 = 0.25 * np.cumsum(V, axis=0)[-1] + np.cumsum(cnt * dev * dev + dev * U, axis=0)[-1]
        bm2 = np.maximum(bm2, 0.0)
        if mean is None:
            mean, m2 = bm, bm2
        else:
            reference.merge_block(mean, m2, count, bm, bm2, B)
        count += B
    if not m4:
        return mean, m2, None
    # sum over the pairs of (c + h)^4 per fold, c = base_f - mean, h = w d / 2, the folds in order
    cf = base - mean[None]
    c2 = cf * cf
    x = (((ctot * c2 * c2 + 4.0 * (c2 * cf) * (0.5 * A[0])) + 6.0 * c2 * (0.25 * A[1]))
         + 4.0 * cf * (0.125 * A[2])) + 0.0625 * A[3]
    return mean, m2, np.cumsum(x, axis=0)[-1]


def interval_dof(m2, m4, M):
    """Degrees of freedom for the t interval over M pair estimates with sums of squared and
    fourth-power deviations m2, m4 [n, mw]: Satterthwaite's match of the variance of the sample
    variance, Var(s^2) / sigma^4 = 2 / (M - 1) + (kappa - 3) / M, with kappa the pairs' kurtosis
    pooled over the players and outputs (M sum m4 / sum m2^2), so df = 2 / (2 / (M - 1) +
    max(kappa - 3, 0) / M) <= M - 1, floored. Normal pairs keep M - 1; heavy-tailed ones (a
    pooled kurtosis of 8-11 on a smooth game at 10n) get fewer, and a wider interval, where a
    standard error from a few heavy-tailed pairs is itself uncertain (smooth-12 at 10n: 0.916 ->
    0.930 coverage; benchmarks/RESULTS.md)."""
    if M < 2:
        return None
    m2 = np.asarray(m2, dtype=np.float64).ravel()
    den = float(m2 @ m2)
    kappa = M * float(np.sum(m4)) / den if den > 0 else 3.0
    if not math.isfinite(kappa):
        return M - 1
    df = 2.0 / (2.0 / (M - 1) + max(kappa - 3.0, 0.0) / M)
    return int(max(1, min(M - 1, math.floor(df))))


class PendingDof:
    """interval_dof of a finished regression run, worked out when first asked (ShapleyResult.dof):
    one more estimate from the run's values, with the pairs' fourth powers, which a run that never
    asks for an interval does not pay for (~5 ns a pair). Holds the run's design and its values
    (the arrays of the result's state, not copies)."""

    __slots__ = ("plan", "seed", "engine", "v0", "vN", "E_vals", "P_vals", "M")

    def __init__(self, plan, seed, engine, v0, vN, E_vals, P_vals, M):
        self.plan, self.seed, self.engine, self.v0, self.vN = plan, seed, engine, v0, vN
        self.E_vals, self.P_vals, self.M = E_vals, P_vals, M

    def __call__(self):
        # The estimate is linear in the values, so scaling them all by a power of two scales its
        # squares and fourth powers exactly and leaves the kurtosis as it was: values near 1 keep
        # the fourth powers inside float64 whatever the game's units (at 1e+-80 they would
        # overflow or underflow, and the degrees of freedom would change with the units).
        parts = (self.E_vals, self.P_vals, self.v0, self.vN)
        big = max((float(np.max(np.abs(a))) for a in parts if np.size(a)), default=0.0)
        e = int(np.frexp(big)[1]) if big > 0 and math.isfinite(big) else 0
        E, P, v0, vN = (np.ldexp(np.asarray(a, dtype=np.float64), -e) for a in parts)
        fit = Fit(self.plan, self.seed, self.engine, v0, vN)
        _, st, m4 = fit.estimate(E, P, self.M, m4=True)
        return interval_dof(st[1], m4, self.M)


def _other_folds(x):
    """[F, ...]: each fold's fit's sums over the pairs of the other folds (a Gram matrix or a right
    side), from each fold's own x [F, ...] (linear in the pairs): the folds' total, summed in fold
    order, less its own (the native estimate_finish makes the right sides' the same way). A loop
    over the folds, not np.cumsum along axis 0: the same adds, 40 -> 10 us for 8 x 33 x 33."""
    total = x[0].copy()
    for f in range(1, x.shape[0]):
        total += x[f]
    return total[None] - x


def _pair_dt(packed, Y, n, D):
    """[B, mw]: the pairs' target differences t(S) - t(N minus S) = (v(S) - v(N minus S)) - (2
    z_last - 1) D (D = v(N) - v(0)) from their sets packed [B, ceil(n / 8)] and values Y [2B, mw]
    (the native estimate_finish makes the same ones)."""
    last = ((packed[:, (n - 1) >> 3] >> (7 - ((n - 1) & 7))) & 1).astype(np.float64)[:, None]
    return (Y[0::2] - Y[1::2]) - (2.0 * last - 1.0) * D[None, :]


def estimate_finish(packed, P_vals, M, W, n, F, k, PB, D, sizefeat, wt, hE, hW, fac, Tb, L, X2,
                    qpos, engine=None, m4=False):
    """(mean, m2, m4) [n, mw] of the regression estimate from the folds' factors fac (_factor_psd) on:
    the right sides h [F, p, mw] of pairs W..M-1 (pair_gram; fold b % F counted from W, W a
    multiple of PB) added to hW (the whole blocks' own, or None), each fold's right side hs_f = hE
    + (sum of h over the folds in order - h_f) (fold f's fit leaves fold f out), the folds'
    solutions, then estimate_tail. Where every fold factored, one native op does it all (~11 us
    at n = 30, K = 16, against ~36 as five NumPy and native calls); the NumPy twin composes the
    same steps, so it gives the same bits."""
    mw = P_vals.shape[1]
    bad = fac[1] if len(fac) == 3 else None
    mod = _native_for(engine)
    if mod is not None and bad is None:
        mean, m2, q4 = np.empty((n, mw)), np.empty((n, mw)), np.empty((n, mw)) if m4 else None
        mod.regression_finish_cpu(np.ascontiguousarray(packed[:M]), M, W, n, F, k, mw, PB,
                                  np.ascontiguousarray(P_vals[:2 * M], dtype=np.float64),
                                  np.ascontiguousarray(D, dtype=np.float64),
                                  np.ascontiguousarray(sizefeat), np.ascontiguousarray(wt),
                                  np.ascontiguousarray(hE),
                                  None if hW is None else np.ascontiguousarray(hW),
                                  np.ascontiguousarray(fac[0]), np.ascontiguousarray(Tb), int(L),
                                  np.ascontiguousarray(X2, dtype=np.float64),
                                  np.ascontiguousarray(qpos, dtype=np.float64), mean, m2, q4)
        return mean, m2, q4
    p = n - 1 + k
    h = np.zeros((F, p, mw))
    part = packed[W:M]
    pair_gram(part, n, F, sizefeat, wt, _pair_dt(part, P_vals[2 * W:2 * M], n, D), None, h, engine)
    if hW is not None:
        h = hW + h
    hs = hE[None] + _other_folds(h)
    sol = solve_factored(fac, hs, engine)
    return estimate_tail(packed, P_vals, M, n, F, k, PB, sol, D, Tb, L, X2, qpos, engine, m4)


def pair_gram(packed, n, F, sizefeat, wt, dt, G, h, engine=None):
    """Add one block of pairs to the folds' Gram sums in place: row b of the block (fold b % F)
    has features a = (z_0 - z_last, ..., z_{n-2} - z_last, sizefeat[s]) and weight wt[s]; G [F, p,
    p] (None: skipped) gets (wt a) a^T on and above the diagonal (below it: left as it is; Fit
    mirrors the upper triangle), h [F, p, mw] gets a (dt_b (wt / 2)). packed [B, ceil(n / 8)],
    sizefeat [n + 1, k], wt [n + 1], dt [B, mw]. Rows are added one at a time in order, so the native op and this NumPy
    twin give the same bits."""
    B, mw = dt.shape
    k = sizefeat.shape[1]
    mod = _native_for(engine)
    if mod is not None:
        mod.regression_gram_cpu(np.ascontiguousarray(packed), B, n, F, k, mw,
                                np.ascontiguousarray(sizefeat), np.ascontiguousarray(wt),
                                np.ascontiguousarray(dt), G, h)
        return
    Z = np.unpackbits(packed, axis=1, count=n).astype(bool)
    s = Z.sum(1)
    last = Z[:, -1:].astype(np.float64)
    A = np.concatenate([Z[:, :-1] - last, sizefeat[s]], 1)
    w = wt[s]
    WA = w[:, None] * A
    E = dt * (0.5 * w)[:, None]
    p = A.shape[1]
    step = max(1, (1 << 21) // max(p * p, 1))
    up = np.triu(np.ones((p, p), dtype=bool))
    for f in range(F):
        rows = np.arange(f, B, F)
        for r0 in range(0, len(rows), step):
            r = rows[r0:r0 + step]
            if G is not None:
                outer = WA[r][:, :, None] * A[r][:, None, :]
                G[f] = np.where(up, np.cumsum(np.concatenate([G[f][None], outer]), axis=0)[-1], G[f])
            h[f] = np.cumsum(np.concatenate([h[f][None], A[r][:, :, None] * E[r][:, None, :]]), axis=0)[-1]


def pair_counts(packed, n, F, stats, engine=None):
    """Add one block of pairs to the integer statistics the fit's Gram matrices are made of
    (stats: N, S1, SL, C, CL of Fit._new_stats), in place. Row b of the block (fold f = b % F) is
    taken on the pair's smaller side (S_b when 2 s_b <= n, else its complement: a pair's rows have
    features a and -a, so either side gives the same a a^T), of size t <= n / 2; with z its players
    but the last and l whether it holds the last, at [f, t]: N gets z z^T (on and above the
    diagonal; below it: left as it is), S1 gets z, SL gets l z, C gets 1, CL gets l. Integers:
    exact in any order, so the native op counts bit-sliced (64 pairs of a fold and size to a word
    per player, a count of two players one popcount) instead of p^2 / 2 multiply-adds per pair.
    n <= COUNTS_MAX_PLAYERS."""
    N, S1, SL, C, CL = (stats[x] for x in ("N", "S1", "SL", "C", "CL"))
    B = packed.shape[0]
    mod = _native_for(engine)
    if mod is not None:
        mod.regression_counts_cpu(np.ascontiguousarray(packed), B, n, F, N, S1, SL, C, CL)
        return
    Z = np.unpackbits(packed, axis=1, count=n).astype(bool)
    s = Z.sum(1)
    flip = 2 * s > n
    t = np.where(flip, n - s, s)
    Zt = Z ^ flip[:, None]
    zt = Zt[:, :-1].astype(np.int64)
    last = Zt[:, -1].astype(np.int64)
    fold = np.arange(B) % F
    np.add.at(C, (fold, t), 1)
    np.add.at(CL, (fold, t), last)
    np.add.at(S1, (fold, t), zt)
    np.add.at(SL, (fold, t), zt * last[:, None])
    key = fold * C.shape[1] + t
    for g in np.unique(key):
        zg = zt[key == g]
        N[g // C.shape[1], g % C.shape[1]] += np.triu(zg.T @ zg)


def counts_gram(stats, wt, sizefeat):
    """The pairs' Gram matrices [..., p, p] from their integer statistics (pair_counts, summed over
    whatever leading axes stats have): with a = (z_j - l, x_t) on the smaller side of size t,
    sum over t of wt[t] [[N_t - SL_t 1^T - 1 SL_t^T + CL_t 1 1^T, (S1_t - CL_t) x_t^T], [.., C_t x_t
    x_t^T]], x_t = sizefeat[t] (wt must be symmetric, wt[s] = wt[n - s], as a pair's weight is: the
    counts file a pair under its smaller side). The same for every engine: the counts are exact
    and this sum is one NumPy expression."""
    N, S1, SL, C, CL = (stats[x] for x in ("N", "S1", "SL", "C", "CL"))
    T = C.shape[-1]
    w = wt[:T]
    x = sizefeat[:T]
    pz = N.shape[-1]
    up = (w @ N.astype(np.float64).reshape(N.shape[:-2] + (pz * pz,))).reshape(N.shape[:-3] + (pz, pz))
    zz = _mirror_upper(up)
    zl = np.einsum("...tj,t->...j", SL.astype(np.float64), w)
    cl = np.einsum("...t,t->...", CL.astype(np.float64), w)
    zz = zz - zl[..., :, None] - zl[..., None, :] + cl[..., None, None]
    if x.shape[1] == 0:
        return zz
    wx = x * w[:, None]
    zx = np.einsum("...tj,tc->...jc", (S1 - CL[..., None]).astype(np.float64), wx)
    xx = np.einsum("...t,ta,tb->...ab", C.astype(np.float64), wx, x)
    top = np.concatenate([zz, zx], -1)
    bottom = np.concatenate([np.swapaxes(zx, -1, -2), xx], -1)
    return np.concatenate([top, bottom], -2)


_COUNTS = ("N", "S1", "SL", "C", "CL")


class Fit:
    """Everything the estimate needs from the values seen so far, computed in fixed blocks (so
    its bits depend only on the values and their order; the enumerated part and the whole
    blocks' statistics are kept between calls, which adds them in the same order). The pairs'
    statistics (_new_stats) are integer counts per fold and smaller-side size up to
    COUNTS_MAX_PLAYERS (pair_counts, counts_gram), else Gram sums pair by pair (pair_gram), and
    the right sides; the per-pair work runs in the native ops where the engine is native.

    The surrogate f(S) = v(0) + sum_j beta_j z_j + c . size_features(|S|) with
    sum(beta) = v(N) - v(0), parametrised by b = beta_0..beta_{n-2} and c: features z_j - z_last
    and the size features, target v(S) - v(0) - (v(N) - v(0)) z_last, by
    weighted least squares: the enumerated rows by the Shapley kernel, the sampled rows by what
    their residual costs the estimate's variance (Plan.pair_weights), each group at a mean weight of 1
    per row. (Pairwise terms z_j z_k were tried: the estimate does not change, to the last digits
    — a pair's weights are antisymmetric, w(N minus S) = -w(S), so only v(S) - v(N minus S) is
    sampled, and pairwise terms reduce to additive ones there.)
    """

    def __init__(self, plan: Plan, seed: int, engine, v_empty, v_full):
        self.plan, self.seed, self.engine = plan, seed, engine
        self.v0 = np.asarray(v_empty, dtype=np.float64).reshape(-1)
        self.vN = np.asarray(v_full, dtype=np.float64).reshape(-1)
        self.n = plan.n
        self.k = size_terms(self.n)
        self._packed = np.zeros((0, (self.n + 7) // 8), dtype=np.uint8)  # pairs' S, bit-packed
        self._rows = 0
        self._enum = None  # (nE, Tb, GE, hE)
        self._gram = None  # [pairs in whole blocks so far, their statistics (_new_stats)]
        self._key = (_engine_key(engine), int(seed), plan)  # design_cache's keys of this design

    def keep(self, j0, packed):
        """Keep the sets S_j of pairs from j0 (pair_packed's rows), so the estimate need not draw
        them again: n / 8 bytes per pair."""
        if j0 != self._rows:
            return
        if j0 == 0:  # the first rows: kept as they are (read-only; the next keep copies them)
            self._packed, self._rows = packed, packed.shape[0]
            return
        need = self._rows + packed.shape[0]
        if need > self._packed.shape[0]:
            grown = np.zeros((max(need, 2 * self._packed.shape[0]), packed.shape[1]), dtype=np.uint8)
            grown[:self._rows] = self._packed[:self._rows]
            self._packed = grown
        self._packed[self._rows:need] = packed
        self._rows = need

    def pair_packed(self, j0, j1):
        """pair_packed(seed, j0, j1, plan), from the kept sets where they are."""
        if j1 <= self._rows:
            return self._packed[j0:j1]
        return pair_packed(self.seed, j0, j1, self.plan, self.engine)

    def pair_block(self, mw):
        """Pairs per block of the estimate (fixed by n and the number of outputs), a multiple of
        FOLDS so that fold f of every block is its rows f, f + FOLDS, ..."""
        return FOLDS * int(max(1, min(4096, (1 << 21) // (self.n * mw)) // FOLDS))

    def _enumerated_part(self, E_vals):
        """(Tb, GE, hE): the exact share (v(N) - v(0)) / n plus the enumerated sizes' T_i(s)
        [n, mw], and the enumerated rows' Gram matrix and right side (kernel weights)."""
        plan, n = self.plan, self.n
        mw = self.v0.shape[0]
        p = n - 1 + self.k
        D = self.vN - self.v0
        Tb = np.empty((n, mw))
        Tb[:] = D / n
        hE = None if plan.exact else np.zeros((p, mw))
        GE = None
        nE = E_vals.shape[0]
        for r0 in range(0, nE, ENUM_BLOCK):
            r1 = min(nE, r0 + ENUM_BLOCK)
            W, AW, last, GEc = _enumerated_chunk(plan, r0, r1, nE)
            enumerated_terms(E_vals[r0:r1], W, AW, last, self.v0, D, Tb, hE, self.engine)
            if not plan.exact:
                GE = GEc if GE is None else GE + GEc
        if GE is None:
            GE, hE = np.zeros((p, p)), np.zeros((p, mw))
        return Tb, GE, hE

    def _new_stats(self, mw, counts=True):
        """Empty sums of the pairs' fit statistics: integer counts (n <= COUNTS_MAX_PLAYERS; not
        with counts=False) or the Gram matrices' upper triangles, and the right sides h [F, p, mw]."""
        n, F, p = self.n, FOLDS, self.n - 1 + self.k
        h = np.zeros((F, p, mw))
        if n <= COUNTS_MAX_PLAYERS:
            if not counts:
                return {"h": h}
            T = n // 2 + 1
            return {"N": np.zeros((F, T, n - 1, n - 1), dtype=np.int64),
                    "S1": np.zeros((F, T, n - 1), dtype=np.int64),
                    "SL": np.zeros((F, T, n - 1), dtype=np.int64),
                    "C": np.zeros((F, T), dtype=np.int64), "CL": np.zeros((F, T), dtype=np.int64),
                    "h": h}
        return {"G": np.zeros((F, p, p)), "h": h}

    def _add_pairs(self, stats, j0, j1, P_vals, counts=True, h=True):
        """Add pairs j0..j1-1 (j0 a multiple of FOLDS) to the folds' statistics: fold f is the
        block's rows f, f + F, ... A pair's two rows have features A and -A and equal weights:
        together they add 2 w A A^T to the Gram matrix and w A (t(S) - t(N minus S)) to h.
        counts=False: h alone (the counts are known already, from design_cache); h=False: the
        counts alone (estimate_finish makes h)."""
        n = self.n
        if counts and "N" in stats and not stats["N"].flags.writeable:  # shared with design_cache
            for key in _COUNTS:
                stats[key] = stats[key].copy()
        packed = self.pair_packed(j0, j1)
        if h:
            pair_gram(packed, n, FOLDS, _size_table(n), self.plan.pair_weights,
                      _pair_dt(packed, P_vals[2 * j0:2 * j1], n, self.vN - self.v0),
                      stats.get("G"), stats["h"], self.engine)
        if counts and "N" in stats:
            pair_counts(packed, n, FOLDS, stats, self.engine)

    def _direct_gram(self, B):
        """Whether a partial block of B pairs has its Gram matrices summed pair by pair (a pure
        function of the design, so the bits are too): where that costs less than the counts."""
        n, p = self.n, self.n - 1 + self.k
        return B * p * p <= DIRECT_GRAM_SHARE * FOLDS * (n // 2 + 1) * (n - 1) ** 2

    def _partial_gram(self, W, M):
        """[F, p, p]: the folds' Gram matrices of pairs W..M-1, summed pair by pair (pair_gram)."""
        n, F, p = self.n, FOLDS, self.n - 1 + self.k
        G, h = np.zeros((F, p, p)), np.zeros((F, p, 1))
        pair_gram(self.pair_packed(W, M), n, F, _size_table(n), self.plan.pair_weights,
                  np.zeros((M - W, 1)), G, h, self.engine)
        return self._fold_gram({"G": G, "h": None})[0]

    def _fold_gram(self, stats):
        """(G [F, p, p], h [F, p, mw]): each fold's own Gram matrix and right side (the fit of fold
        f takes the others': _other_folds)."""
        if "N" in stats:
            return counts_gram(stats, self.plan.pair_weights, _size_table(self.n)), stats["h"]
        G = stats["G"]
        return _mirror_upper(G), stats["h"]

    @staticmethod
    def _share(key, value):
        """Put value (arrays, or a tuple / dict of them) in design_cache where it admits the key,
        read-only from then on."""
        if not design_cache.admits(key):
            return
        arrays = [value] if isinstance(value, np.ndarray) else \
            [a for v in value for a in (v.values() if isinstance(v, dict) else [v])]
        for a in arrays:
            a.setflags(write=False)
        design_cache.put(key, value, sum(a.nbytes for a in arrays))

    def estimate(self, E_vals, P_vals, M, m4=False):
        """(values [n, mw], (mean, m2, count) over the M pairs' estimates, or None when every
        size is enumerated, and with m4=True m4 [n, mw]: the sum of their fourth powers about the
        mean, else None) from the enumerated values E_vals [nE, mw] and the first M pairs' values
        P_vals [2M, mw]."""
        plan, n = self.plan, self.n
        mw = self.v0.shape[0]
        nE = E_vals.shape[0]
        if self._enum is None or self._enum[0] != nE:
            self._enum = (nE,) + self._enumerated_part(E_vals)
        _, Tb, GE, hE = self._enum
        if plan.exact or M == 0:
            return Tb.copy(), None, None
        qpos = plan.qpos
        F = FOLDS
        PB = self.pair_block(mw)
        # The folds' statistics over whole blocks are kept between calls (an anytime run asks at
        # growing M), with their Gram matrices: whole blocks are added in the same order as from
        # scratch, so the bits are the same; the last, partial block gets statistics of its own.
        if self._gram is None or self._gram[0] > M:
            self._gram = [0, None, None]  # statistics made at the first whole block
        gram = self._gram
        # The counts (n <= COUNTS_MAX_PLAYERS) and their Gram matrices depend on the pairs' sets
        # alone: design_cache keeps them for the next run of this seed and plan.
        cached = n <= COUNTS_MAX_PLAYERS and design_cache.limit > 0
        key = ("counts",) + self._key + (PB,)
        W = M // PB * PB  # the whole blocks' end
        if W > gram[0]:
            hit = design_cache.get(key + (W,)) if cached else None
            if gram[1] is None:
                gram[1] = self._new_stats(mw, counts=hit is None)
            for j0 in range(gram[0], W, PB):
                self._add_pairs(gram[1], j0, j0 + PB, P_vals, counts=hit is None)
            if hit is not None:
                gram[1].update(hit[0])
                gram[2] = (hit[1], gram[1]["h"])
            else:
                gram[2] = self._fold_gram(gram[1])
                if cached:
                    self._share(key + (W,), ({c: gram[1][c] for c in _COUNTS}, gram[2][0]))
            gram[0] = W
        Gf, hf = gram[2] if gram[2] is not None else (None, None)  # None: no whole block yet
        # Up to COUNTS_MAX_PLAYERS the folds' systems are solved by their Cholesky factors, which
        # depend on the design alone: design_cache keeps them, and a run that finds them needs
        # neither the pairs' Gram matrices nor a factorisation, only the right sides.
        factored = n <= COUNTS_MAX_PLAYERS
        fkey = ("factor",) + key[1:] + (M,)
        fac = design_cache.get(fkey) if cached else None
        if factored:
            # the partial block's Gram matrices where neither they nor the factor are known
            # (summed pair by pair or counted: _direct_gram); its right sides, the solves and
            # the tail are estimate_finish's
            if M > W and fac is None:
                Gq = design_cache.get(key + (W, M)) if cached else None
                if Gq is None:
                    if self._direct_gram(M - W):
                        Gq = self._partial_gram(W, M)
                    else:
                        part = self._new_stats(mw)
                        self._add_pairs(part, W, M, P_vals, h=False)
                        Gq = self._fold_gram(part)[0]
                    if cached:
                        self._share(key + (W, M), Gq)
                Gf = Gq if Gf is None else Gf + Gq
            if fac is None:
                fac = _factor_psd(GE[None] + _other_folds(Gf), self.engine)
                if cached:  # (U,) when every fold factored, else (U, bad, G_bad)
                    self._share(fkey, fac if fac[1] is not None else fac[:1])
            mean, m2, q4 = estimate_finish(self.pair_packed(0, M), P_vals, M, W, n, F, self.k, PB,
                                       self.vN - self.v0, _size_table(n), plan.pair_weights, hE,
                                       hf, fac, Tb, len(plan.mid), _size_table(n, 2.0), qpos,
                                       self.engine, m4)
            return mean, (mean, m2, M), q4
        if M > W:
            part = self._new_stats(mw)
            self._add_pairs(part, W, M, P_vals)
            Gq = self._fold_gram(part)[0]
            Gf = Gq if Gf is None else Gf + Gq
            hf = part["h"] if hf is None else hf + part["h"]
        # every row counts once (mean weight 1 in each group): the enumerated rows steady the fit
        # while pairs are few and weigh less as they accumulate. Fold f's fit leaves fold f out.
        hs = hE[None] + _other_folds(hf)
        sol = _solve_psd(GE[None] + _other_folds(Gf), hs)
        # the folds' surrogates (beta [F, n, mw], the last by sum(beta) = v(N) - v(0); c [F, k, mw])
        # and pair j's estimate psi_j = base_f + w(S_j) d_j / 2, with d_j = (r(S_j) - r(N minus
        # S_j)) / q(s_j) the residual's difference (w(N minus S) = -w(S)): the blocks' mean and M2
        # from per-fold sums of w d and w^2 d^2 (estimate_tail)
        mean, m2, q4 = estimate_tail(self.pair_packed(0, M), P_vals, M, n, F, self.k, PB, sol,
                                 self.vN - self.v0, Tb, len(plan.mid), _size_table(n, 2.0), qpos,
                                 self.engine, m4)
        return mean, (mean, m2, M), q4
