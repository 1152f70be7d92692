// bindings.cpp — the pybind11 module shapcam._C and the one place that says SHAPCAM_WITH_CUDA.
//
// CPU ops take NumPy buffers (C-contiguous; shapcam/ops.py checks shapes and dtypes at the
// boundary and these checks repeat the cheap ones). CUDA ops take raw device pointers as integers,
// a device ordinal and a stream handle: no framework types cross this boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/ops_cpu.h"
#include "cpu/packed.h"
#include "shapcam/index.h"
#include "shapcam/permutation.h"
#include "shapcam/walk.h"
#ifdef SHAPCAM_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

namespace py = pybind11;
using namespace shapcam;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

// A failed check is a ValueError. A macro so that the message is built only on failure: these
// checks run on every call, and ~1 us of a small op's call went to strings never shown.
#define SHAPCAM_REQUIRE(ok, msg)                                      \
  do {                                                                \
    if (!(ok)) throw std::invalid_argument(msg);                      \
  } while (0)

// a * b for sizes (both >= 0), refusing what does not fit in int64: no size product may wrap.
int64_t mul(int64_t a, int64_t b, const char* what) {
  if (a < 0 || b < 0) throw std::invalid_argument(std::string(what) + ": negative size");
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + ": size overflows 64 bits");
  return r;
}

// Player ids and ranks are int32: n must fit, and the sampled ops need two players or more.
void check_n(int64_t n, int64_t lowest = 2) {
  SHAPCAM_REQUIRE(n >= lowest, "n: need at least " + std::to_string(lowest) + " players, got " +
                           std::to_string(n));
  SHAPCAM_REQUIRE(n <= std::numeric_limits<int32_t>::max(),
          "n: at most 2^31 - 1 players (ids are int32), got " + std::to_string(n));
}

// The sampling design (permutation.h) as permutations per sample: 1 plain, 2 antithetic,
// 4 stratified; a Python bool keeps its old meaning (True: antithetic pairs, False: plain).
int group_arg(const py::handle& h) {
  if (PyBool_Check(h.ptr())) return h.ptr() == Py_True ? shapcam::kAntithetic : shapcam::kPlain;
  SHAPCAM_REQUIRE(PyLong_Check(h.ptr()), "group: expected a bool or an int (1, 2 or 4)");
  const long long g = PyLong_AsLongLong(h.ptr());
  if (g == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument("group: out of range");
  }
  SHAPCAM_REQUIRE(shapcam::valid_group(g), "group: permutations per sample must be 1 (plain), 2 "
                                   "(antithetic) or 4 (stratified), got " + std::to_string(g));
  return static_cast<int>(g);
}

void check_range(int64_t lo, int64_t hi, const char* what) {
  SHAPCAM_REQUIRE(lo >= 0 && hi >= lo, std::string(what) + ": need 0 <= start <= stop, got [" +
                                   std::to_string(lo) + ", " + std::to_string(hi) + ")");
}

// Byte range of a buffer, for the aliasing checks.
struct Span {
  const char* name;
  uintptr_t lo, hi;
};

template <typename T>
Span span(const char* name, const T* p, int64_t count) {
  const auto lo = reinterpret_cast<uintptr_t>(p);
  return Span{name, lo, lo + static_cast<uintptr_t>(count) * sizeof(T)};
}

Span span_bytes(const char* name, uintptr_t p, int64_t bytes) {
  return Span{name, p, p + static_cast<uintptr_t>(bytes)};
}

// An output may not overlap any other buffer of the op: the engines read inputs while writing
// outputs, and the reference twin would give other bits.
void check_disjoint(const Span& out, std::initializer_list<Span> others) {
  for (const Span& o : others) {
    if (out.lo == out.hi || o.lo == o.hi || o.lo == 0) continue;
    if (!(out.hi <= o.lo || o.hi <= out.lo))
      throw std::invalid_argument(std::string(out.name) + " overlaps " + o.name +
                                  " in memory; pass separate buffers");
  }
}

// Each output disjoint from every input and from the other outputs (a null output is skipped).
void check_outputs(std::initializer_list<Span> outs, std::initializer_list<Span> ins) {
  for (auto o = outs.begin(); o != outs.end(); ++o) {
    if (o->lo == 0) continue;
    for (const Span& i : ins) check_disjoint(*o, {i});
    for (auto p = o + 1; p != outs.end(); ++p) check_disjoint(*o, {*p});
  }
}

// Every row of packed [B, ceil(n / 8)] has a size the regression plan samples (1 <= s <= n - 1,
// q(s) > 0), as the moments divide by q(s): checked before any work.
void check_sampled_sizes(const uint8_t* packed, int64_t B, int64_t n, const double* q) {
  const int64_t nb = (n + 7) / 8;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = cpu::row_size(packed + b * nb, n);
    if (!(s >= 1 && s <= n - 1 && q[s] > 0)) {  // the message is built only on failure
      throw std::invalid_argument("packed: row " + std::to_string(b) + " has a size that is not sampled");
    }
  }
}

template <typename T>
void check_array(const py::array& a, const char* name, int64_t expected_size) {
  if (!py::isinstance<carray<T>>(a) || !(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array of the right dtype");
  if (a.size() != expected_size)
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(expected_size) +
                                " elements, got " + std::to_string(a.size()));
}

template <typename T>
T* writable(py::array& a, const char* name, int64_t expected_size) {
  check_array<T>(a, name, expected_size);
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": array is read-only");
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
const T* readable(const py::array& a, const char* name, int64_t expected_size) {
  check_array<T>(a, name, expected_size);
  return static_cast<const T*>(a.data());
}

// An optional array argument: nullptr for None, else checked as writable / readable (the size
// computed by the caller); `keep` holds the cast array for the call.
template <typename T>
T* optional_writable(const py::object& o, py::array& keep, const char* name, int64_t size) {
  if (o.is_none()) return nullptr;
  keep = o.cast<py::array>();
  return writable<T>(keep, name, size);
}

template <typename T>
const T* optional_readable(const py::object& o, py::array& keep, const char* name, int64_t size) {
  if (o.is_none()) return nullptr;
  keep = o.cast<py::array>();
  return readable<T>(keep, name, size);
}

// The regression tail's tables and outputs, shared by regression_tail_cpu and
// regression_finish_cpu: Tb [n, mw], X2 [n + 1, k], q [n + 1], mean, m2 [n, mw], m4 [n, mw] or None.
struct TailIO {
  int64_t cells, xsize;
  const double *Tb, *X2, *q;
  double *mean, *m2, *m4;
  py::array m4_keep;

  // Every pair's size sampled (packed [M, ceil(n / 8)]), and the outputs apart from each other,
  // from the tables and packed, and from the op's other inputs `ins`.
  void check(const uint8_t* packed, int64_t M, int64_t n, std::initializer_list<Span> ins) const {
    check_sampled_sizes(packed, M, n, q);
    const int64_t nb = (n + 7) / 8;
    check_outputs({span("mean", mean, cells), span("m2", m2, cells), span("m4", m4, m4 ? cells : 0)},
                  {span("packed", packed, M * nb), span("Tb", Tb, cells), span("X2", X2, xsize),
                   span("q", q, n + 1)});
    check_outputs({span("mean", mean, cells), span("m2", m2, cells), span("m4", m4, m4 ? cells : 0)},
                  ins);
  }
};

TailIO tail_io(const py::array& Tb, const py::array& X2, const py::array& q, py::array& mean,
               py::array& m2, const py::object& m4, int64_t n, int64_t k, int64_t mw) {
  TailIO io;
  io.cells = mul(n, mw, "cells");
  io.xsize = mul(n + 1, k, "X2");
  io.Tb = readable<double>(Tb, "Tb", io.cells);
  io.X2 = readable<double>(X2, "X2", io.xsize);
  io.q = readable<double>(q, "q", n + 1);
  io.mean = writable<double>(mean, "mean", io.cells);
  io.m2 = writable<double>(m2, "m2", io.cells);
  io.m4 = optional_writable<double>(m4, io.m4_keep, "m4", io.cells);
  return io;
}

// Every id of the player map must name a player: an id outside [0, n) would index past a rank row.
void check_player_ids(const int32_t* players, int64_t inner, int64_t n) {
  for (int64_t j = 0; j < inner; ++j) {
    if (players[j] < 0 || players[j] >= n) {
      throw std::invalid_argument("players: id " + std::to_string(players[j]) + " at position " +
                                  std::to_string(j) + " is outside [0, " + std::to_string(n) + ")");
    }
  }
}

// Shapes of the fused op: x [outer, inner] with both >= 1; returns numel.
int64_t check_apply_shape(int64_t outer, int64_t inner) {
  SHAPCAM_REQUIRE(outer >= 1 && inner >= 1, "x: outer and inner must be >= 1 (an input with no elements "
                                    "has nothing to mask), got outer=" + std::to_string(outer) +
                                    " inner=" + std::to_string(inner));
  return mul(outer, inner, "x");
}

// The sizes of one accumulate call, checked once for both engines: values [rows, m], the ranks'
// scratch [P, n] int32, and the state [n, m] (cells).
struct AccumulateSizes {
  int64_t rows, values, ranks, cells;
};

AccumulateSizes check_accumulate(int64_t n, int64_t n_samples, int64_t k0, int64_t count0,
                                 int64_t m_out, int group, int64_t block) {
  check_n(n);
  SHAPCAM_REQUIRE(n_samples >= 0 && k0 >= 0 && count0 >= 0, "accumulate: negative index");
  SHAPCAM_REQUIRE(block >= 0, "block: samples per block must be >= 0 (0: no blocks)");
  SHAPCAM_REQUIRE(n_samples <= INT64_MAX - count0, "count0 + n_samples overflows int64");
  SHAPCAM_REQUIRE(m_out >= 1, "m: need at least 1 output");
  const int64_t pps = group;
  SHAPCAM_REQUIRE(k0 % pps == 0, "k0: must start a sample (a multiple of the group size)");
  const int64_t P = mul(n_samples, pps, "samples");
  const int64_t rows = mul(P, n - 1, "values");
  return AccumulateSizes{rows, mul(rows, m_out, "values"), mul(P, n, "ranks"),
                         mul(n, m_out, "mean")};
}

// Bytes of a CUDA op's global permutation workspace for `perms` permutations of n players
// (ops_cuda.h), overflow-checked; 0 when work is 0.
int64_t work_bytes(uintptr_t work, int64_t perms, int64_t n) {
  if (!work) return 0;
  return mul(mul(perms, permutation_work_words(n), "work"), 4, "work");
}

// Permutations a chunk of evaluations [e0, e1) touches.
int64_t chunk_perms(int64_t e0, int64_t e1, int64_t n) {
  return eval_index(e1 - 1, n).k - eval_index(e0, n).k + 1;
}

// The cell structure of a cell game: members [cells, size] (-1 pads) and cell_of [n] must
// describe one partition of the n players: every player in exactly one cell, cell_of agreeing.
void check_cells(const int32_t* members, int64_t cells, int64_t size, const int32_t* cell_of,
                 int64_t n) {
  SHAPCAM_REQUIRE(cells >= 1, "cells: need at least one cell");
  SHAPCAM_REQUIRE(size >= 1 && size <= kMaxCellSize,
          "cells: at most " + std::to_string(kMaxCellSize) + " players per cell, got " + std::to_string(size));
  std::vector<int32_t> seen(n, 0);
  for (int64_t c = 0; c < cells; ++c) {
    for (int64_t b = 0; b < size; ++b) {
      const int32_t m = members[c * size + b];
      if (m == -1) continue;
      SHAPCAM_REQUIRE(m >= 0 && m < n, "members: id " + std::to_string(m) + " outside [0, " + std::to_string(n) + ")");
      SHAPCAM_REQUIRE(cell_of[m] == c, "cell_of: player " + std::to_string(m) + " is a member of cell " +
                                   std::to_string(c) + " but cell_of says " + std::to_string(cell_of[m]));
      SHAPCAM_REQUIRE(++seen[m] == 1, "members: player " + std::to_string(m) + " is in more than one place");
    }
  }
  for (int64_t p = 0; p < n; ++p) {
    SHAPCAM_REQUIRE(seen[p] == 1, "members: player " + std::to_string(p) + " is in no cell");
  }
}

template <typename T>
void prefix_walk_cpu_typed(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                           const py::array& tables, int64_t cells, int64_t size, int64_t d,
                           const py::array& members, const py::array& cell_of,
                           const py::array& z_empty, py::array& out) {
  SHAPCAM_REQUIRE(d >= 1, "d: need at least one dimension");
  SHAPCAM_REQUIRE(size >= 1 && size <= kMaxCellSize, "size: between 1 and " + std::to_string(kMaxCellSize));
  const int64_t tsize = mul(mul(cells, int64_t(1) << size, "tables"), d, "tables");
  const T* tp = readable<T>(tables, "tables", tsize);
  const int32_t* mp = readable<int32_t>(members, "members", mul(cells, size, "members"));
  const int32_t* cp = readable<int32_t>(cell_of, "cell_of", n);
  const T* zp = readable<T>(z_empty, "z_empty", d);
  const int64_t osize = mul(e1 - e0, d, "out");
  T* op = writable<T>(out, "out", osize);
  check_cells(mp, cells, size, cp, n);
  check_disjoint(span("out", op, osize), {span("tables", tp, tsize), span("z_empty", zp, d),
                                          span("members", mp, cells * size), span("cell_of", cp, n)});
  py::gil_scoped_release nogil;
  cpu::prefix_walk<T>(seed, e0, e1, n, group, tp, cells, size, d, mp, cp, zp, op);
}

template <typename T>
void masked_apply_cpu_typed(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                            const py::array& x, int64_t outer, int64_t inner,
                            const py::array& players, const py::object& baseline, py::array& out) {
  const int64_t numel = check_apply_shape(outer, inner);
  const T* xp = readable<T>(x, "x", numel);
  const int32_t* pp = readable<int32_t>(players, "players", inner);
  T* op = writable<T>(out, "out", mul(e1 - e0, numel, "out"));
  const T* bp = nullptr;
  T bscalar = 0;
  py::array barr;
  if (py::isinstance<py::array>(baseline)) {
    barr = baseline.cast<py::array>();
    bp = readable<T>(barr, "baseline", numel);
  } else {
    SHAPCAM_REQUIRE(!baseline.is_none(), "baseline: expected a number or an array, got None");
    bscalar = baseline.cast<T>();
  }
  check_player_ids(pp, inner, n);
  check_disjoint(span("out", op, (e1 - e0) * numel),
                 {span("x", xp, numel), span("players", pp, inner), span("baseline", bp, bp ? numel : 0)});
  py::gil_scoped_release nogil;
  cpu::masked_apply<T>(seed, e0, e1, n, group, xp, outer, inner, pp, bp, bscalar, op);
}

#ifndef SHAPCAM_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "shapcam._C was built without CUDA (nvcc was not found at build time, or SHAPCAM_CUDA=0); "
      "rebuild with nvcc on PATH to use device='cuda'");
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "shapcam's native engine: permutations, prefix masks, fused masked apply, accumulation";

#ifdef SHAPCAM_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
  m.def("num_threads", &cpu::num_threads, "Threads the CPU ops use.");
  m.def(
      "permutation_work_words",
      [](int64_t n) {
        check_n(n, 1);
        return permutation_work_words(n);
      },
      "int32 words one permutation of n players takes in a CUDA op's global workspace (work=).",
      py::arg("n"));

  m.def(
      "permutations_cpu",
      [](uint64_t seed, int64_t k0, int64_t k1, int64_t n, py::object group_arg_obj, py::object perm,
         py::object rank) {
        const int group = group_arg(group_arg_obj);
        check_range(k0, k1, "permutations [k0, k1)");
        check_n(n, 1);
        const int64_t size = mul(k1 - k0, n, "perm/rank");
        py::array pa, ra;
        int32_t* pp = optional_writable<int32_t>(perm, pa, "perm", size);
        int32_t* rp = optional_writable<int32_t>(rank, ra, "rank", size);
        if (pp && rp) check_disjoint(span("rank", rp, size), {span("perm", pp, size)});
        py::gil_scoped_release nogil;
        cpu::permutations(seed, k0, k1, n, group, pp, rp);
      },
      "Permutations [k0, k1) of n players into perm [K, n] and/or rank [K, n] (int32; None skips).",
      py::arg("seed"), py::arg("k0"), py::arg("k1"), py::arg("n"), py::arg("group"),
      py::arg("perm"), py::arg("rank"));

  m.def(
      "masks_cpu",
      [](uint64_t seed, int64_t e0, int64_t e1, int64_t n, py::object group_arg_obj, py::array out) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        bool* op = writable<bool>(out, "out", mul(e1 - e0, n, "out"));
        py::gil_scoped_release nogil;
        cpu::masks(seed, e0, e1, n, group, op);
      },
      "Prefix masks of evaluations [e0, e1) into out [B, n] (bool).", py::arg("seed"),
      py::arg("e0"), py::arg("e1"), py::arg("n"), py::arg("group"), py::arg("out"));

  m.def(
      "masked_apply_cpu",
      [](uint64_t seed, int64_t e0, int64_t e1, int64_t n, py::object group_arg_obj, py::array x,
         int64_t outer, int64_t inner, py::array players, py::object baseline, py::array out) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        if (py::isinstance<carray<float>>(x)) {
          masked_apply_cpu_typed<float>(seed, e0, e1, n, group, x, outer, inner, players, baseline, out);
        } else if (py::isinstance<carray<double>>(x)) {
          masked_apply_cpu_typed<double>(seed, e0, e1, n, group, x, outer, inner, players, baseline, out);
        } else {
          throw std::invalid_argument("x: dtype must be float32 or float64");
        }
      },
      "Fused masked apply for evaluations [e0, e1): out[b, o, j] = x[o, j] if player players[j] is "
      "in the prefix of eval e0+b, else baseline. x [outer, inner], players [inner] int32, baseline "
      "a scalar or [outer, inner], out [B, outer, inner].",
      py::arg("seed"), py::arg("e0"), py::arg("e1"), py::arg("n"), py::arg("group"),
      py::arg("x"), py::arg("outer"), py::arg("inner"), py::arg("players"), py::arg("baseline"),
      py::arg("out"));

  m.def(
      "prefix_walk_cpu",
      [](uint64_t seed, int64_t e0, int64_t e1, int64_t n, py::object group_arg_obj, py::array tables,
         int64_t cells, int64_t size, int64_t d, py::array members, py::array cell_of,
         py::array z_empty, py::array out) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        if (py::isinstance<carray<float>>(tables)) {
          prefix_walk_cpu_typed<float>(seed, e0, e1, n, group, tables, cells, size, d, members, cell_of, z_empty, out);
        } else if (py::isinstance<carray<double>>(tables)) {
          prefix_walk_cpu_typed<double>(seed, e0, e1, n, group, tables, cells, size, d, members, cell_of, z_empty, out);
        } else {
          throw std::invalid_argument("tables: dtype must be float32 or float64 (C-contiguous)");
        }
      },
      "The incremental prefix walk of a cell game for evaluations [e0, e1): out [B, d] = z of each "
      "coalition (csrc/include/shapcam/walk.h). tables [cells, 2^size, d]; members [cells, size] "
      "int32 (-1 pads); cell_of [n] int32; z_empty [d].",
      py::arg("seed"), py::arg("e0"), py::arg("e1"), py::arg("n"), py::arg("group"),
      py::arg("tables"), py::arg("cells"), py::arg("size"), py::arg("d"), py::arg("members"),
      py::arg("cell_of"), py::arg("z_empty"), py::arg("out"));

  m.def(
      "accumulate_cpu",
      [](uint64_t seed, int64_t k0, int64_t n_samples, int64_t n, int64_t m_out, py::object group_arg_obj,
         py::array values, py::array v_empty, py::array v_full, int64_t count0, py::array mean,
         py::array m2, int64_t block, py::object base_mean, py::object base_m2) {
        const int group = group_arg(group_arg_obj);
        const AccumulateSizes z = check_accumulate(n, n_samples, k0, count0, m_out, group, block);
        const int64_t rows = z.rows, cells = z.cells;
        const double* vp = readable<double>(values, "values", z.values);
        const double* ve = readable<double>(v_empty, "v_empty", m_out);
        const double* vf = readable<double>(v_full, "v_full", m_out);
        double* mp = writable<double>(mean, "mean", cells);
        double* sp = writable<double>(m2, "m2", cells);
        const Span ins[] = {span("values", vp, rows * m_out), span("v_empty", ve, m_out),
                            span("v_full", vf, m_out)};
        check_disjoint(span("mean", mp, cells), {ins[0], ins[1], ins[2], span("m2", sp, cells)});
        check_disjoint(span("m2", sp, cells), {ins[0], ins[1], ins[2]});
        double* bmp = nullptr;
        double* bsp = nullptr;
        if (block > 0) {
          SHAPCAM_REQUIRE(!base_mean.is_none() && !base_m2.is_none(), "block > 0 needs base_mean and base_m2");
          py::array bm = base_mean.cast<py::array>(), bs = base_m2.cast<py::array>();
          bmp = writable<double>(bm, "base_mean", cells);
          bsp = writable<double>(bs, "base_m2", cells);
          check_disjoint(span("base_mean", bmp, cells), {ins[0], ins[1], ins[2], span("mean", mp, cells),
                                                         span("m2", sp, cells), span("base_m2", bsp, cells)});
          check_disjoint(span("base_m2", bsp, cells), {ins[0], ins[1], ins[2], span("mean", mp, cells),
                                                       span("m2", sp, cells)});
        }
        py::gil_scoped_release nogil;
        cpu::accumulate(seed, k0, n_samples, n, m_out, group, vp, ve, vf, count0, mp, sp, block,
                        bmp, bsp);
      },
      "Push n_samples complete samples (values [S*pps*(n-1), m] float64) into the Welford state "
      "mean, m2 [n, m]; block > 0: in blocks of that many samples, each finished block folded "
      "into base_mean, base_m2 (accumulate.h).",
      py::arg("seed"), py::arg("k0"), py::arg("n_samples"), py::arg("n"), py::arg("m"),
      py::arg("group"), py::arg("values"), py::arg("v_empty"), py::arg("v_full"),
      py::arg("count0"), py::arg("mean"), py::arg("m2"), py::arg("block") = 0,
      py::arg("base_mean") = py::none(), py::arg("base_m2") = py::none());

  m.def(
      "regression_pairs_cpu",
      [](uint64_t seed, int64_t j0, int64_t j1, int64_t n, py::array thresholds, py::array mid,
         py::object masks, py::object packed, py::object sizes) {
        check_range(j0, j1, "pairs [j0, j1)");
        check_n(n);
        SHAPCAM_REQUIRE(mid.size() >= 1 && mid.size() == thresholds.size() + 1,
                "mid: need one more size than thresholds");
        const int64_t n_thr = thresholds.size();
        const uint64_t* tp = readable<uint64_t>(thresholds, "thresholds", n_thr);
        const int64_t* mp = readable<int64_t>(mid, "mid", n_thr + 1);
        bool sizes_ok = true, ascending = true;
        for (int64_t i = 0; i <= n_thr; ++i) sizes_ok = sizes_ok && mp[i] >= 1 && mp[i] <= n - 1;
        for (int64_t i = 1; i < n_thr; ++i) ascending = ascending && tp[i - 1] <= tp[i];
        SHAPCAM_REQUIRE(sizes_ok, "mid: sizes must lie in [1, n - 1]");
        SHAPCAM_REQUIRE(ascending, "thresholds: must ascend");
        const int64_t B = j1 - j0;
        bool* op = nullptr;
        uint8_t* pp = nullptr;
        int64_t* sp = nullptr;
        py::array ma, pa, sa;
        if (!masks.is_none()) { ma = masks.cast<py::array>(); op = writable<bool>(ma, "masks", mul(mul(B, 2, "masks"), n, "masks")); }
        if (!packed.is_none()) { pa = packed.cast<py::array>(); pp = writable<uint8_t>(pa, "packed", mul(B, (n + 7) / 8, "packed")); }
        if (!sizes.is_none()) { sa = sizes.cast<py::array>(); sp = writable<int64_t>(sa, "sizes", B); }
        check_outputs({span("masks", op, op ? 2 * B * n : 0), span("packed", pp, pp ? B * ((n + 7) / 8) : 0),
                       span("sizes", sp, sp ? B : 0)},
                      {span("thresholds", tp, n_thr), span("mid", mp, n_thr + 1)});
        py::gil_scoped_release nogil;
        cpu::regression_pairs(seed, j0, j1, n, tp, n_thr, mp, op, pp, sp);
      },
      "The regression sampler's pairs [j0, j1) (csrc/include/shapcam/pairs.h) into masks [2B, n] "
      "bool (S_j, its complement, ...), packed [B, ceil(n/8)] uint8 (S_j as numpy.packbits) and "
      "sizes [B] int64 (each may be None). thresholds [T] uint64 ascending, mid [T + 1] int64.",
      py::arg("seed"), py::arg("j0"), py::arg("j1"), py::arg("n"), py::arg("thresholds"),
      py::arg("mid"), py::arg("masks"), py::arg("packed"), py::arg("sizes"));

  m.def(
      "regression_moments_cpu",
      [](py::array packed, int64_t B, int64_t n, int64_t F, int64_t mw, py::array dY, py::array beta,
         py::array sterm, py::array q, py::array U, py::array V) {
        check_n(n);
        SHAPCAM_REQUIRE(B >= 0 && F >= 1 && mw >= 1, "regression_moments: need B >= 0, F >= 1, mw >= 1");
        const int64_t cells = mul(n, mw, "cells");
        const uint8_t* pp = readable<uint8_t>(packed, "packed", mul(B, (n + 7) / 8, "packed"));
        const double* yp = readable<double>(dY, "dY", mul(B, mw, "dY"));
        const double* bp = readable<double>(beta, "beta", mul(F, cells, "beta"));
        const int64_t ssize = mul(mul(F, n + 1, "sterm"), mw, "sterm");
        const double* tp = readable<double>(sterm, "sterm", ssize);
        const double* qp = readable<double>(q, "q", n + 1);
        double* up = writable<double>(U, "U", mul(F, cells, "U"));
        double* vp = writable<double>(V, "V", F * cells);
        check_sampled_sizes(pp, B, n, qp);
        const int64_t nb = (n + 7) / 8;
        check_outputs({span("U", up, F * cells), span("V", vp, F * cells)},
                      {span("packed", pp, B * nb), span("dY", yp, B * mw), span("beta", bp, F * cells),
                       span("sterm", tp, ssize), span("q", qp, n + 1)});
        py::gil_scoped_release nogil;
        cpu::regression_moments(pp, B, n, F, mw, yp, bp, tp, qp, up, vp);
      },
      "The pairs' residual moments of one block of the regression estimate (ops_cpu.h): U, V "
      "[F, n, mw] from packed [B, ceil(n/8)], dY [B, mw], beta [F, n, mw], sterm [F, n+1, mw], "
      "q [n+1].",
      py::arg("packed"), py::arg("B"), py::arg("n"), py::arg("F"), py::arg("mw"), py::arg("dY"),
      py::arg("beta"), py::arg("sterm"), py::arg("q"), py::arg("U"), py::arg("V"));

  m.def(
      "regression_gram_cpu",
      [](py::array packed, int64_t B, int64_t n, int64_t F, int64_t k, int64_t mw, py::array sizefeat,
         py::array wt, py::array dt, py::object G, py::array h) {
        check_n(n);
        SHAPCAM_REQUIRE(B >= 0 && F >= 1 && k >= 0 && mw >= 1, "regression_gram: need B >= 0, F >= 1, k >= 0, mw >= 1");
        const int64_t p = n - 1 + k;
        const int64_t nb = (n + 7) / 8;
        const uint8_t* pp = readable<uint8_t>(packed, "packed", mul(B, nb, "packed"));
        const int64_t fsize = mul(n + 1, k, "sizefeat");
        const double* fp = readable<double>(sizefeat, "sizefeat", fsize);
        const double* wp = readable<double>(wt, "wt", n + 1);
        const double* dp = readable<double>(dt, "dt", mul(B, mw, "dt"));
        const int64_t gsize = G.is_none() ? 0 : mul(F, mul(p, p, "G"), "G");
        py::array ga;
        double* gp = optional_writable<double>(G, ga, "G", gsize);
        double* hp = writable<double>(h, "h", mul(F, mul(p, mw, "h"), "h"));
        check_outputs({span("G", gp, gsize), span("h", hp, F * p * mw)},
                      {span("packed", pp, B * nb), span("sizefeat", fp, fsize), span("wt", wp, n + 1),
                       span("dt", dp, B * mw)});
        py::gil_scoped_release nogil;
        cpu::regression_gram(pp, B, n, F, k, mw, fp, wp, dp, gp, hp);
      },
      "Add one block of pairs to the regression fit's Gram sums (ops_cpu.h): G [F, p, p] (upper "
      "triangle) and h [F, p, mw] in place, p = n - 1 + k; packed [B, ceil(n/8)], sizefeat "
      "[n+1, k], wt [n+1], dt [B, mw].",
      py::arg("packed"), py::arg("B"), py::arg("n"), py::arg("F"), py::arg("k"), py::arg("mw"),
      py::arg("sizefeat"), py::arg("wt"), py::arg("dt"), py::arg("G"), py::arg("h"));

  m.def(
      "regression_counts_cpu",
      [](py::array packed, int64_t B, int64_t n, int64_t F, py::array N, py::array S1, py::array SL,
         py::array C, py::array CL) {
        check_n(n);
        SHAPCAM_REQUIRE(B >= 0 && F >= 1, "regression_counts: need B >= 0 and F >= 1");
        SHAPCAM_REQUIRE(n <= 64, "regression_counts: n must be at most 64 (a pair's players are one 64-bit "
                         "word; regression.COUNTS_MAX_PLAYERS)");
        const int64_t nb = (n + 7) / 8;
        const uint8_t* pp = readable<uint8_t>(packed, "packed", mul(B, nb, "packed"));
        const int64_t cs = mul(F, n / 2 + 1, "C");
        const int64_t ss = mul(cs, n - 1, "S1");
        const int64_t ns = mul(ss, n - 1, "N");
        int64_t* np_ = writable<int64_t>(N, "N", ns);
        int64_t* sp = writable<int64_t>(S1, "S1", ss);
        int64_t* lp = writable<int64_t>(SL, "SL", ss);
        int64_t* cp = writable<int64_t>(C, "C", cs);
        int64_t* clp = writable<int64_t>(CL, "CL", cs);
        check_outputs({span("N", np_, ns), span("S1", sp, ss), span("SL", lp, ss), span("C", cp, cs),
                       span("CL", clp, cs)},
                      {span("packed", pp, B * nb)});
        py::gil_scoped_release nogil;
        cpu::regression_counts(pp, B, n, F, np_, sp, lp, cp, clp);
      },
      "Add one block of pairs to the fit's integer statistics (ops_cpu.h): N [F, n/2+1, n-1, n-1] "
      "(upper triangle), S1, SL [F, n/2+1, n-1], C, CL [F, n/2+1] int64 in place; packed "
      "[B, ceil(n/8)].",
      py::arg("packed"), py::arg("B"), py::arg("n"), py::arg("F"), py::arg("N"), py::arg("S1"),
      py::arg("SL"), py::arg("C"), py::arg("CL"));

  m.def(
      "regression_tail_cpu",
      [](py::array packed, int64_t M, int64_t n, int64_t F, int64_t k, int64_t mw, int64_t PB,
         py::array P, py::array sol, py::array D, py::array Tb, int64_t L, py::array X2, py::array q,
         py::array mean, py::array m2, py::object m4) {
        check_n(n);
        SHAPCAM_REQUIRE(n >= 2 && M >= 0 && F >= 1 && k >= 0 && mw >= 1 && PB >= 1 && L >= 0,
                "regression_tail: need n >= 2, M >= 0, F >= 1, k >= 0, mw >= 1, PB >= 1, L >= 0");
        const int64_t nb = (n + 7) / 8;
        const int64_t p = n - 1 + k;
        mul(mul(F, n + 1, "sterm"), mw, "sterm");
        const uint8_t* pp = readable<uint8_t>(packed, "packed", mul(M, nb, "packed"));
        const int64_t psize = mul(mul(M, 2, "P"), mw, "P");
        const double* Pp = readable<double>(P, "P", psize);
        const int64_t ssize = mul(mul(F, p, "sol"), mw, "sol");
        const double* sp = readable<double>(sol, "sol", ssize);
        const double* dp = readable<double>(D, "D", mw);
        TailIO io = tail_io(Tb, X2, q, mean, m2, m4, n, k, mw);
        io.check(pp, M, n, {span("P", Pp, psize), span("sol", sp, ssize), span("D", dp, mw)});
        py::gil_scoped_release nogil;
        cpu::regression_tail(pp, M, n, F, k, mw, PB, Pp, sp, dp, io.Tb, L, io.X2, io.q, io.mean, io.m2,
                             io.m4);
      },
      "The regression estimate's tail (ops_cpu.h): mean, m2 [n, mw] over the M pairs' estimates "
      "from the folds' solutions sol [F, n-1+k, mw], packed [M, ceil(n/8)], P [2M, mw], D [mw], "
      "Tb [n, mw], X2 [n+1, k], q [n+1], in blocks of PB pairs; m4 [n, mw] (or None): the sum "
      "of the pairs' estimates' fourth powers about the mean.",
      py::arg("packed"), py::arg("M"), py::arg("n"), py::arg("F"), py::arg("k"), py::arg("mw"),
      py::arg("PB"), py::arg("P"), py::arg("sol"), py::arg("D"), py::arg("Tb"), py::arg("L"),
      py::arg("X2"), py::arg("q"), py::arg("mean"), py::arg("m2"), py::arg("m4") = py::none());

  m.def(
      "regression_enum_cpu",
      [](py::array Y, int64_t R, int64_t n, int64_t p, int64_t mw, py::array W, py::array AW,
         py::array last, py::array v0, py::array D, py::array Tb, py::object hE) {
        check_n(n, 1);
        SHAPCAM_REQUIRE(R >= 0 && p >= 0 && mw >= 1, "regression_enum: need R >= 0, p >= 0, mw >= 1");
        const int64_t ysize = mul(R, mw, "Y");
        const double* yp = readable<double>(Y, "Y", ysize);
        const int64_t wsize = mul(R, n, "W");
        const double* wp = readable<double>(W, "W", wsize);
        const int64_t asize = mul(R, p, "AW");
        const double* ap = readable<double>(AW, "AW", asize);
        const double* lp = readable<double>(last, "last", R);
        const double* v0p = readable<double>(v0, "v0", mw);
        const double* dp = readable<double>(D, "D", mw);
        const int64_t tsize = mul(n, mw, "Tb");
        double* tp = writable<double>(Tb, "Tb", tsize);
        py::array hEa;
        const int64_t hsize = mul(p, mw, "hE");
        double* hp = optional_writable<double>(hE, hEa, "hE", hsize);
        check_outputs({span("Tb", tp, tsize), span("hE", hp, hp ? hsize : 0)},
                      {span("Y", yp, ysize), span("W", wp, wsize), span("AW", ap, asize),
                       span("last", lp, R), span("v0", v0p, mw), span("D", dp, mw)});
        py::gil_scoped_release nogil;
        cpu::regression_enum(yp, R, n, p, mw, wp, ap, lp, v0p, dp, tp, hp);
      },
      "The enumerated rows' share of the regression estimate (ops_cpu.h), in place: Tb [n, mw] += "
      "W [R, n]^T Y [R, mw], hE [p, mw] (or None) += AW [R, p]^T ((Y - v0) - last D), in row order.",
      py::arg("Y"), py::arg("R"), py::arg("n"), py::arg("p"), py::arg("mw"), py::arg("W"),
      py::arg("AW"), py::arg("last"), py::arg("v0"), py::arg("D"), py::arg("Tb"), py::arg("hE"));

  m.def(
      "regression_finish_cpu",
      [](py::array packed, int64_t M, int64_t W, int64_t n, int64_t F, int64_t k, int64_t mw,
         int64_t PB, py::array P, py::array D, py::array sizefeat, py::array wt, py::array hE,
         py::object hW, py::array U, py::array Tb, int64_t L, py::array X2, py::array q,
         py::array mean, py::array m2, py::object m4) {
        check_n(n);
        SHAPCAM_REQUIRE(M >= W && W >= 0 && F >= 1 && k >= 0 && mw >= 1 && PB >= 1 && L >= 0,
                "regression_finish: need 0 <= W <= M, F >= 1, k >= 0, mw >= 1, PB >= 1, L >= 0");
        const int64_t nb = (n + 7) / 8;
        const int64_t p = n - 1 + k;
        const int64_t hsize = mul(mul(F, p, "h"), mw, "h");
        mul(mul(F, n + 1, "sterm"), mw, "sterm");
        const uint8_t* pp = readable<uint8_t>(packed, "packed", mul(M, nb, "packed"));
        const int64_t psize = mul(mul(M, 2, "P"), mw, "P");
        const double* Pp = readable<double>(P, "P", psize);
        const double* dp = readable<double>(D, "D", mw);
        const int64_t fsize = mul(n + 1, k, "sizefeat");
        const double* fp = readable<double>(sizefeat, "sizefeat", fsize);
        const double* wp = readable<double>(wt, "wt", n + 1);
        const double* ep = readable<double>(hE, "hE", p * mw);
        py::array hWa;
        const double* hwp = optional_readable<double>(hW, hWa, "hW", hsize);
        const int64_t usize = mul(F, mul(p, p, "U"), "U");
        const double* up = readable<double>(U, "U", usize);
        TailIO io = tail_io(Tb, X2, q, mean, m2, m4, n, k, mw);
        io.check(pp, M, n, {span("P", Pp, psize), span("D", dp, mw), span("sizefeat", fp, fsize),
                            span("wt", wp, n + 1), span("hE", ep, p * mw),
                            span("hW", hwp, hwp ? hsize : 0), span("U", up, usize)});
        py::gil_scoped_release nogil;
        cpu::regression_finish(pp, M, W, n, F, k, mw, PB, Pp, dp, fp, wp, ep, hwp, up, io.Tb, L, io.X2,
                               io.q, io.mean, io.m2, io.m4);
      },
      "The regression estimate from the right sides on, where the folds' factors U are known "
      "(ops_cpu.h): the right sides of pairs W..M-1 added to hW [F, p, mw] (or None), the folds' "
      "solves with hE [p, mw], then regression_tail_cpu into mean, m2 [n, mw].",
      py::arg("packed"), py::arg("M"), py::arg("W"), py::arg("n"), py::arg("F"), py::arg("k"),
      py::arg("mw"), py::arg("PB"), py::arg("P"), py::arg("D"), py::arg("sizefeat"), py::arg("wt"),
      py::arg("hE"), py::arg("hW"), py::arg("U"), py::arg("Tb"), py::arg("L"), py::arg("X2"),
      py::arg("q"), py::arg("mean"), py::arg("m2"), py::arg("m4") = py::none());

  m.def(
      "regression_cholesky_cpu",
      [](py::array A, int64_t F, int64_t p, double ridge, py::array U, py::array ok) {
        SHAPCAM_REQUIRE(F >= 0 && p >= 0, "regression_cholesky: need F >= 0 and p >= 0");
        SHAPCAM_REQUIRE(std::isfinite(ridge) && ridge >= 0, "regression_cholesky: ridge must be finite and >= 0");
        const int64_t size = mul(F, mul(p, p, "A"), "A");
        const double* ap = readable<double>(A, "A", size);
        double* up = writable<double>(U, "U", size);
        uint8_t* okp = writable<uint8_t>(ok, "ok", F);
        check_outputs({span("U", up, size), span("ok", okp, F)}, {span("A", ap, size)});
        py::gil_scoped_release nogil;
        cpu::regression_cholesky(ap, F, p, ridge, up, okp);
      },
      "The Cholesky factors A_f + lam_f I = U_f^T U_f of the fit's systems (ops_cpu.h), lam_f = "
      "ridge * the mean diagonal: A [F, p, p] float64 (upper triangle read), U [F, p, p] out "
      "(upper triangle written), ok [F] uint8 out.",
      py::arg("A"), py::arg("F"), py::arg("p"), py::arg("ridge"), py::arg("U"), py::arg("ok"));

  m.def(
      "regression_cholsolve_cpu",
      [](py::array U, int64_t F, int64_t p, int64_t mw, py::array h, py::array x) {
        SHAPCAM_REQUIRE(F >= 0 && p >= 0 && mw >= 1, "regression_cholsolve: need F >= 0, p >= 0, mw >= 1");
        const int64_t usize = mul(F, mul(p, p, "U"), "U");
        const int64_t hsize = mul(F, mul(p, mw, "h"), "h");
        const double* up = readable<double>(U, "U", usize);
        const double* hp = readable<double>(h, "h", hsize);
        double* xp = writable<double>(x, "x", hsize);
        check_outputs({span("x", xp, hsize)}, {span("U", up, usize), span("h", hp, hsize)});
        py::gil_scoped_release nogil;
        cpu::regression_cholsolve(up, F, p, mw, hp, xp);
      },
      "x = A_f^-1 h [F, p, mw] from the factors U of regression_cholesky_cpu (ops_cpu.h).",
      py::arg("U"), py::arg("F"), py::arg("p"), py::arg("mw"), py::arg("h"), py::arg("x"));

#ifdef SHAPCAM_WITH_CUDA
  m.def("cuda_device_count", &cuda::device_count, "CUDA devices usable now (0 without a driver).");
  m.def("cuda_max_players", &cuda::max_players,
        "Largest n whose permutation fits a block's shared memory on a device; beyond it the CUDA "
        "ops need a global workspace (work=).", py::arg("device"));
  m.def(
      "permutations_cuda",
      [](int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t k1, int64_t n,
         py::object group_arg_obj, uintptr_t perm, uintptr_t rank, uintptr_t work) {
        const int group = group_arg(group_arg_obj);
        check_range(k0, k1, "permutations [k0, k1)");
        check_n(n, 1);
        const int64_t bytes = mul(mul(k1 - k0, n, "perm/rank"), 4, "perm/rank");
        if (perm && rank) check_disjoint(span_bytes("rank", rank, bytes), {span_bytes("perm", perm, bytes)});
        const int64_t wb = work_bytes(work, k1 - k0, n);
        check_disjoint(span_bytes("work", work, wb),
                       {span_bytes("perm", perm, perm ? bytes : 0), span_bytes("rank", rank, rank ? bytes : 0)});
        py::gil_scoped_release nogil;
        cuda::permutations(device, stream, seed, k0, k1, n, group, perm, rank, work);
      },
      "CUDA twin of permutations_cpu; perm/rank are device pointers (0 skips); work: the global "
      "permutation workspace (ops_cuda.h), 0 for shared memory.", py::arg("device"),
      py::arg("stream"), py::arg("seed"), py::arg("k0"), py::arg("k1"), py::arg("n"),
      py::arg("group"), py::arg("perm"), py::arg("rank"), py::arg("work") = 0);
  m.def(
      "masks_cuda",
      [](int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
         py::object group_arg_obj, uintptr_t out, uintptr_t work) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        const int64_t ob = mul(e1 - e0, n, "out");
        if (e1 > e0) {
          check_disjoint(span_bytes("work", work, work_bytes(work, chunk_perms(e0, e1, n), n)),
                         {span_bytes("out", out, ob)});
        }
        py::gil_scoped_release nogil;
        cuda::masks(device, stream, seed, e0, e1, n, group, out, work);
      },
      "CUDA twin of masks_cpu; out is a device pointer to [B, n] bool; work: the global "
      "permutation workspace (ops_cuda.h), 0 for shared memory.", py::arg("device"),
      py::arg("stream"), py::arg("seed"), py::arg("e0"), py::arg("e1"), py::arg("n"),
      py::arg("group"), py::arg("out"), py::arg("work") = 0);
  m.def(
      "masked_apply_cuda",
      [](int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
         py::object group_arg_obj, int dtype_bytes, uintptr_t x, int64_t outer, int64_t inner,
         uintptr_t players, uintptr_t baseline, double baseline_scalar, uintptr_t out,
         uintptr_t work) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        SHAPCAM_REQUIRE(dtype_bytes == 4 || dtype_bytes == 8, "x: dtype must be float32 or float64");
        const int64_t numel = check_apply_shape(outer, inner);
        const int64_t out_bytes = mul(mul(e1 - e0, numel, "out"), dtype_bytes, "out");
        const Span ins[] = {span_bytes("x", x, numel * dtype_bytes), span_bytes("players", players, inner * 4),
                            span_bytes("baseline", baseline, baseline ? numel * dtype_bytes : 0)};
        check_disjoint(span_bytes("out", out, out_bytes), {ins[0], ins[1], ins[2]});
        if (e1 > e0) {
          check_disjoint(span_bytes("work", work, work_bytes(work, chunk_perms(e0, e1, n), n)),
                         {ins[0], ins[1], ins[2], span_bytes("out", out, out_bytes)});
        }
        py::gil_scoped_release nogil;
        cuda::masked_apply(device, stream, seed, e0, e1, n, group, dtype_bytes, x, outer,
                           inner, players, baseline, baseline_scalar, out, work);
      },
      "The fused CUDA kernel: permutations, prefix masks and masked write in one launch.",
      py::arg("device"), py::arg("stream"), py::arg("seed"), py::arg("e0"), py::arg("e1"),
      py::arg("n"), py::arg("group"), py::arg("dtype_bytes"), py::arg("x"), py::arg("outer"),
      py::arg("inner"), py::arg("players"), py::arg("baseline"), py::arg("baseline_scalar"),
      py::arg("out"), py::arg("work") = 0);
  m.def(
      "prefix_walk_cuda",
      [](int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
         py::object group_arg_obj, int dtype_bytes, uintptr_t tables, int64_t cells, int64_t size,
         int64_t d, uintptr_t members, uintptr_t cell_of, uintptr_t z_empty, uintptr_t out,
         uintptr_t work) {
        const int group = group_arg(group_arg_obj);
        check_range(e0, e1, "chunk [e0, e1)");
        check_n(n);
        SHAPCAM_REQUIRE(dtype_bytes == 4 || dtype_bytes == 8, "tables: dtype must be float32 or float64");
        SHAPCAM_REQUIRE(cells >= 1 && d >= 1, "cells, d: need at least 1");
        SHAPCAM_REQUIRE(size >= 1 && size <= kMaxCellSize, "size: between 1 and " + std::to_string(kMaxCellSize));
        const int64_t tbytes = mul(mul(mul(cells, int64_t(1) << size, "tables"), d, "tables"), dtype_bytes, "tables");
        const int64_t obytes = mul(mul(e1 - e0, d, "out"), dtype_bytes, "out");
        const Span ins[] = {span_bytes("tables", tables, tbytes), span_bytes("z_empty", z_empty, d * dtype_bytes),
                            span_bytes("members", members, mul(cells, size, "members") * 4),
                            span_bytes("cell_of", cell_of, n * 4)};
        check_disjoint(span_bytes("out", out, obytes), {ins[0], ins[1], ins[2], ins[3]});
        if (e1 > e0) {
          check_disjoint(span_bytes("work", work, work_bytes(work, chunk_perms(e0, e1, n), n)),
                         {ins[0], ins[1], ins[2], ins[3], span_bytes("out", out, obytes)});
        }
        py::gil_scoped_release nogil;
        cuda::prefix_walk(device, stream, seed, e0, e1, n, group, dtype_bytes, tables, cells,
                          size, d, members, cell_of, z_empty, out, work);
      },
      "CUDA twin of prefix_walk_cpu over device pointers (one block per permutation).",
      py::arg("device"), py::arg("stream"), py::arg("seed"), py::arg("e0"), py::arg("e1"),
      py::arg("n"), py::arg("group"), py::arg("dtype_bytes"), py::arg("tables"),
      py::arg("cells"), py::arg("size"), py::arg("d"), py::arg("members"), py::arg("cell_of"),
      py::arg("z_empty"), py::arg("out"), py::arg("work") = 0);
  m.def(
      "accumulate_cuda",
      [](int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t n_samples, int64_t n,
         int64_t m_out, py::object group_arg_obj, uintptr_t values, uintptr_t v_empty, uintptr_t v_full,
         int64_t count0, uintptr_t mean, uintptr_t m2, uintptr_t scratch, int64_t block,
         uintptr_t base_mean, uintptr_t base_m2, uintptr_t work) {
        const int group = group_arg(group_arg_obj);
        const AccumulateSizes z = check_accumulate(n, n_samples, k0, count0, m_out, group, block);
        const int64_t scratch_bytes = mul(z.ranks, 4, "scratch");
        const int64_t vbytes = mul(z.values, 8, "values");
        const int64_t cbytes = mul(z.cells, 8, "mean");
        const Span ins[] = {span_bytes("values", values, vbytes), span_bytes("v_empty", v_empty, m_out * 8),
                            span_bytes("v_full", v_full, m_out * 8)};
        check_disjoint(span_bytes("mean", mean, cbytes),
                       {ins[0], ins[1], ins[2], span_bytes("m2", m2, cbytes)});
        check_disjoint(span_bytes("m2", m2, cbytes), {ins[0], ins[1], ins[2]});
        check_disjoint(span_bytes("scratch", scratch, scratch_bytes),
                       {ins[0], ins[1], ins[2], span_bytes("mean", mean, cbytes), span_bytes("m2", m2, cbytes)});
        if (block > 0) {
          SHAPCAM_REQUIRE(base_mean != 0 && base_m2 != 0, "block > 0 needs base_mean and base_m2");
          const Span outs[] = {span_bytes("mean", mean, cbytes), span_bytes("m2", m2, cbytes),
                               span_bytes("scratch", scratch, scratch_bytes)};
          check_disjoint(span_bytes("base_mean", base_mean, cbytes),
                         {ins[0], ins[1], ins[2], outs[0], outs[1], outs[2], span_bytes("base_m2", base_m2, cbytes)});
          check_disjoint(span_bytes("base_m2", base_m2, cbytes),
                         {ins[0], ins[1], ins[2], outs[0], outs[1], outs[2]});
        }
        {
          const int64_t wb = work_bytes(work, mul(n_samples, group, "samples"), n);
          check_disjoint(span_bytes("work", work, wb),
                         {ins[0], ins[1], ins[2], span_bytes("mean", mean, cbytes), span_bytes("m2", m2, cbytes),
                          span_bytes("scratch", scratch, scratch_bytes),
                          span_bytes("base_mean", base_mean, block > 0 ? cbytes : 0),
                          span_bytes("base_m2", base_m2, block > 0 ? cbytes : 0)});
        }
        py::gil_scoped_release nogil;
        cuda::accumulate(device, stream, seed, k0, n_samples, n, m_out, group, values,
                         v_empty, v_full, count0, mean, m2, scratch, block, base_mean, base_m2, work);
      },
      "CUDA twin of accumulate_cpu over device pointers (float64); scratch: [n_samples * pps, n] "
      "int32 device memory for the ranks, allocated by the caller (its framework's allocator).",
      py::arg("device"), py::arg("stream"), py::arg("seed"), py::arg("k0"), py::arg("n_samples"),
      py::arg("n"), py::arg("m"), py::arg("group"), py::arg("values"), py::arg("v_empty"),
      py::arg("v_full"), py::arg("count0"), py::arg("mean"), py::arg("m2"), py::arg("scratch"),
      py::arg("block") = 0, py::arg("base_mean") = 0, py::arg("base_m2") = 0, py::arg("work") = 0);
#else
  m.def("cuda_device_count", []() { return 0; }, "CUDA devices usable now (always 0: no CUDA build).");
  for (const char* name : {"permutations_cuda", "masks_cuda", "masked_apply_cuda", "prefix_walk_cuda", "accumulate_cuda",
                           "cuda_max_players"}) {
    m.def(name, [](py::args, py::kwargs) { no_cuda(); }, "Unavailable: built without CUDA.");
  }
#endif
}
