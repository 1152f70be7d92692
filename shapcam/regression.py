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
  left, S the first s players of a uniform permutation. A pair's estimate of the sampled part is
  the importance-weighted sum of r(S) w_i(S) / q(s) over S and its complement, where
  r = v - f is the residual of a surrogate f whose own T_i(s) are known in closed form.
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

The contract: pair j's coalition is ``rank_j < s_j`` with rank_j the ranks of permutation j of
the plain design (csrc/include/shapcam/permutation.h, bit-identical in every engine) and s_j drawn
from word 0 of ``philox(ctr = (0, j & 0xffffffff, j >> 32, 1), key(seed))`` (the fourth counter
word 1 keeps these draws apart from the permutations', which use 0) by integer thresholds of q.
The estimate is computed on the host in float64 from the values in evaluation order, in fixed
blocks, so it does not depend on batch_size, the engine or the device the game runs on.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import combinations, islice

import numpy as np

from . import ops, reference

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

    @property
    def n_enumerated(self) -> int:
        return sum(math.comb(self.n, s) for s in self.enumerated)

    @property
    def q(self) -> np.ndarray:
        mid = np.asarray(self.mid, dtype=np.float64)
        w = (mid * (self.n - mid)) ** -SIZE_EXPONENT
        return w / w.sum()

    @property
    def thresholds(self) -> np.ndarray:
        """uint64 thresholds of a 32-bit word: size index = number of thresholds <= word."""
        c = np.cumsum(self.q)[:-1]
        return np.minimum(np.floor(c * 2.0**32), 2.0**32).astype(np.uint64)

    def as_state(self):
        return {"n": self.n, "enumerated": list(self.enumerated), "mid": list(self.mid)}


def make_plan(n: int, avail) -> Plan:
    """The plan for n >= 2 players and `avail` evaluations beyond the two endpoints (None: not
    known in advance, e.g. a run stopped by tol alone: the border strata only)."""
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


def pair_sets(seed: int, j0: int, j1: int, plan: Plan, engine=None) -> np.ndarray:
    """S_j of pairs j0..j1-1 (the first coalition of each pair): [j1 - j0, n] bool."""
    rank = ops.ranks(seed, j0, j1, plan.n, reference.PLAIN, engine=engine)
    return rank < pair_sizes(seed, j0, j1, plan)[:, None]


def pair_masks(seed: int, j0: int, j1: int, plan: Plan, engine=None) -> np.ndarray:
    """Coalitions of pairs j0..j1-1 in evaluation order (S_j0, its complement, S_j0+1, ...):
    [2 (j1 - j0), n] bool."""
    S = pair_sets(seed, j0, j1, plan, engine)
    out = np.empty((2 * S.shape[0], plan.n), dtype=bool)
    out[0::2] = S
    out[1::2] = ~S
    return out


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
    subsets in itertools.combinations order. [r1 - r0, n] bool."""
    return np.unpackbits(_enumerated_packed(plan)[r0:r1], axis=1, count=plan.n).astype(bool)


def size_terms(n):
    """How many size features the surrogate of n players has."""
    return max(0, min(SIZE_TERMS, (n + 1) // 2 - 1))


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
    p = G.shape[-1]
    scale = np.einsum("fii->f", G) / max(p, 1)
    lam = RIDGE * np.where(scale > 0, scale, 1.0)
    A = G + lam[:, None, None] * np.eye(p)[None]
    try:
        return np.linalg.solve(A, h)
    except np.linalg.LinAlgError:  # not expected with the ridge; kept as the last resort
        return np.stack([np.linalg.lstsq(G[f], h[f], rcond=None)[0] for f in range(G.shape[0])])


def _weights_w(Z, s, n):
    """w_i(S) for rows Z [B, n] bool of sizes s: 1/s in S, -1/(n-s) out."""
    s = s.astype(np.float64)[:, None]
    return np.where(Z, 1.0 / s, -1.0 / (n - s))


class Fit:
    """Everything the estimate needs from the values seen so far, computed in fixed blocks (so
    its bits depend only on the values and their order; the enumerated part and the whole
    blocks' Gram sums are kept between calls, which adds them in the same order).

    The surrogate f(S) = v(0) + sum_j beta_j z_j + c . size_features(|S|) with
    sum(beta) = v(N) - v(0), parametrised by b = beta_0..beta_{n-2} and c: features z_j - z_last
    and the size features, target v(S) - v(0) - (v(N) - v(0)) z_last, by
    weighted least squares: the enumerated rows by the Shapley kernel, the sampled rows by what
    their residual costs the estimate's variance (_pair_weight), each group at a mean weight of 1
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
        self._gram = None  # [pairs in whole blocks so far, G, h]

    def keep(self, j0, masks):
        """Keep the sets S_j of pairs from j0 (masks as evaluated: S_j, its complement, ...), so
        the estimate need not rebuild them: n / 8 bytes per pair."""
        if j0 != self._rows:
            return
        packed = np.packbits(masks[0::2], axis=1)
        need = self._rows + packed.shape[0]
        if need > self._packed.shape[0]:
            grown = np.zeros((max(need, 2 * self._packed.shape[0]), packed.shape[1]), dtype=np.uint8)
            grown[:self._rows] = self._packed[:self._rows]
            self._packed = grown
        self._packed[self._rows:need] = packed
        self._rows = need

    def pair_sets(self, j0, j1):
        """pair_sets(seed, j0, j1, plan), from the kept sets where they are."""
        if j1 <= self._rows:
            return np.unpackbits(self._packed[j0:j1], axis=1, count=self.n).astype(bool)
        return pair_sets(self.seed, j0, j1, self.plan, self.engine)

    def pair_block(self, mw):
        """Pairs per block of the estimate (fixed by n and the number of outputs), a multiple of
        FOLDS so that fold f of every block is its rows f, f + FOLDS, ..."""
        return FOLDS * int(max(1, min(4096, (1 << 21) // (self.n * mw)) // FOLDS))

    def _features(self, Z):
        """(A, s, last): the features of coalitions Z [B, n] (z_j - z_last, then the size
        features), their sizes, and z_last [B, 1]."""
        s = Z.sum(1)
        last = Z[:, -1:].astype(np.float64)
        A = np.concatenate([Z[:, :-1] - last, size_features(self.n, s)], 1)
        return A, s, last

    def _design(self, Z, Y):
        """(A, t, s): features and targets of rows Z with values Y."""
        A, s, last = self._features(Z)
        D = self.vN - self.v0
        t = Y - self.v0[None, :] - last * D[None, :]
        return A, t, s

    def _pair_design(self, Z, Y):
        """(A, dt, s) of pairs with sets Z [B, n] and values Y [2B, mw] (S_j, its complement,
        ...): A the features of S_j (its complement's are -A), dt = t(S_j) - t(N minus S_j)."""
        A, s, last = self._features(Z)
        dt = (Y[0::2] - Y[1::2]) - (2.0 * last - 1.0) * (self.vN - self.v0)[None, :]
        return A, dt, s

    def _pair_weight(self, s, qpos):
        """Least-squares weight of a sampled coalition of size s (drawn with probability qpos[s]),
        with a mean of 1 per row. A pair's share of the estimate's variance is
        E[|w(S)|^2 d(S)^2] / (4 q(s)) summed over sizes, |w(S)|^2 = n / (s (n - s)), d the
        residual's v(S) - v(N minus S); a row drawn with probability q(s) stands for 1 / q(s) of
        its size, so 1 / (s (n - s) q(s)^2) weighs each row by what its residual costs."""
        n = self.n
        mid = np.asarray(self.plan.mid)
        qm = qpos[mid]
        c = 1.0 / (1.0 / (mid * (n - mid) * qm)).sum()  # E_q[weight] = 1
        return c / (s * (n - s) * qpos[s] ** 2)

    def _surrogate(self, b):
        """(beta [n, mw], c [k, mw]) from the solution b [n - 1 + k, mw] (beta's last one by
        sum(beta) = v(N) - v(0))."""
        n = self.n
        beta = np.empty((n, b.shape[1]))
        beta[:-1] = b[:n - 1]
        beta[-1] = (self.vN - self.v0) - b[:n - 1].sum(0)
        return beta, b[n - 1:]

    def _mid_part(self, beta):
        """The surrogate's exact share of the sampled sizes, sum_{s sampled} T_i(s; f): for
        f = z_j, T_j(s) = 1/n and T_i(s) = -1/(n (n - 1)) for i != j, at every size. [n, mw]"""
        n = self.n
        return len(self.plan.mid) * (n * beta - beta.sum(0)[None, :]) / (n * (n - 1))

    def _enumerated_part(self, E_vals):
        """(Tb, GE, hE): the exact share (v(N) - v(0)) / n plus the enumerated sizes' T_i(s)
        [n, mw], and the enumerated rows' Gram matrix and right side (kernel weights)."""
        plan, n = self.plan, self.n
        mw = self.v0.shape[0]
        p = n - 1 + self.k
        Tb = np.repeat(((self.vN - self.v0) / n)[None, :], n, 0)
        GE = np.zeros((p, p))
        hE = np.zeros((p, mw))
        nE = E_vals.shape[0]
        combs = np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)
        for r0 in range(0, nE, ENUM_BLOCK):
            r1 = min(nE, r0 + ENUM_BLOCK)
            Z = enumerated_masks(plan, r0, r1)
            Y = E_vals[r0:r1]
            s = Z.sum(1)
            comb = combs[s]
            Tb += (_weights_w(Z, s, n) / comb[:, None]).T @ Y
            if not plan.exact:
                A, t, _ = self._design(Z, Y)
                # the kernel within the enumerated rows, normalised to a mean of 1 per row
                wt = kernel_mass(n, s) / comb * (nE / kernel_mass(n, np.asarray(plan.enumerated)).sum())
                GE += A.T @ (A * wt[:, None])
                hE += A.T @ (t * wt[:, None])
        return Tb, GE, hE

    def _add_pairs(self, G, h, j0, j1, P_vals, qpos):
        """Add pairs j0..j1-1 (j0 a multiple of FOLDS) to the folds' Gram matrices G [F, p, p]
        and right sides h [F, p, mw]: fold f is the block's rows f, f + F, ..."""
        F = FOLDS
        A, dt, s = self._pair_design(self.pair_sets(j0, j1), P_vals[2 * j0:2 * j1])
        # a pair's two rows have features A and -A and equal weights: together they add
        # 2 w A A^T to the Gram matrix and w A (t(S) - t(N minus S)) to the right side
        wt = 2.0 * self._pair_weight(s, qpos)[:, None]
        for f in range(F):
            Af = A[f::F]
            G[f] += Af.T @ (Af * wt[f::F])
            h[f] += Af.T @ (dt[f::F] * (0.5 * wt[f::F]))

    def estimate(self, E_vals, P_vals, M):
        """(values [n, mw], (mean, m2, count) over the M pairs' estimates, or None when every
        size is enumerated) from the enumerated values E_vals [nE, mw] and the first M pairs'
        values P_vals [2M, mw]."""
        plan, n = self.plan, self.n
        mw = self.v0.shape[0]
        p = n - 1 + self.k
        nE = E_vals.shape[0]
        if self._enum is None or self._enum[0] != nE:
            self._enum = (nE,) + self._enumerated_part(E_vals)
        _, Tb, GE, hE = self._enum
        if plan.exact or M == 0:
            return Tb.copy(), None
        q = plan.q
        qpos = np.zeros(n + 1)
        qpos[list(plan.mid)] = q
        F = FOLDS
        PB = self.pair_block(mw)
        blocks = [(j0, min(M, j0 + PB)) for j0 in range(0, M, PB)]
        # The folds' Gram matrices over whole blocks are kept between calls (an anytime run asks
        # at growing M): whole blocks are added in the same order as from scratch, so the bits
        # are the same.
        if self._gram is None or self._gram[0] > M:
            self._gram = [0, np.zeros((F, p, p)), np.zeros((F, p, mw))]
        gram = self._gram
        for j0, j1 in blocks:
            if j1 <= gram[0]:
                continue
            if j1 - j0 < PB:  # the last, partial block: added to a copy
                G, h = gram[1].copy(), gram[2].copy()
                self._add_pairs(G, h, j0, j1, P_vals, qpos)
                break
            self._add_pairs(gram[1], gram[2], j0, j1, P_vals, qpos)
            gram[0] = j1
        else:
            G, h = gram[1], gram[2]
        Gall, hall = G.sum(0), h.sum(0)
        # every row counts once (mean weight 1 in each group): the enumerated rows steady the fit
        # while pairs are few and weigh less as they accumulate. Fold f's fit leaves fold f out.
        sol = _solve_psd(GE[None] + (Gall[None] - G), hE[None] + (hall[None] - h))
        surr, base = [], np.empty((F, n, mw))
        for f in range(F):
            beta, c = self._surrogate(sol[f])
            surr.append((beta, c))
            base[f] = Tb + self._mid_part(beta)
        mean = m2 = None
        count = 0
        for j0, j1 in blocks:
            # pair j's estimate: psi_j = base_f + w(S_j) d_j / 2, with d_j = (r(S_j) - r(N minus
            # S_j)) / q(s_j) the residual's difference (w(N minus S) = -w(S)); the block's mean
            # and sum of squared deviations follow from per-fold sums of w d and w^2 d^2
            Z = self.pair_sets(j0, j1)
            s = Z.sum(1)
            Y = P_vals[2 * j0:2 * j1]
            pm = 2.0 * Z - 1.0  # z(S) - z(N minus S)
            X2 = 2.0 * size_features(n, s)  # x(S) - x(N minus S): the size terms are odd
            dY = Y[0::2] - Y[1::2]
            W = _weights_w(Z, s, n)
            B = j1 - j0
            D = np.empty_like(dY)
            for f in range(F):
                beta, c = surr[f]
                D[f::F] = dY[f::F] - pm[f::F] @ beta - X2[f::F] @ c
            D /= qpos[s][:, None]
            U = [W[f::F].T @ D[f::F] for f in range(F)]  # [n, mw] each
            cnt = [len(range(f, B, F)) for f in range(F)]
            bm = (sum(cnt[f] * base[f] for f in range(F)) + 0.5 * sum(U)) / B
            bm2 = 0.25 * ((W * W).T @ (D * D))
            for f in range(F):
                if cnt[f]:
                    dev = base[f] - bm
                    bm2 += cnt[f] * dev * dev + dev * U[f]
            np.maximum(bm2, 0.0, out=bm2)
            if mean is None:
                mean, m2 = bm, bm2
            else:
                reference.merge_block(mean, m2, count, bm, bm2, B)
            count += B
        return mean, (mean, m2, count)
