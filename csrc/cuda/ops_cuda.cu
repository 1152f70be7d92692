// ops_cuda.cu — CUDA kernels and launchers; contracts in ops_cuda.h, maths in the shared headers.
#include "ops_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "shapcam/accumulate.h"
#include "shapcam/index.h"
#include "shapcam/permutation.h"
#include "shapcam/walk.h"

namespace shapcam {
namespace cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("shapcam CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

// cuMemGetAddressRange through the runtime's driver entry point (no link to libcuda): the base and
// size of the allocation a device pointer lies in. Null when the driver does not offer it.
using AddressRangeFn = int (*)(unsigned long long* base, size_t* size, unsigned long long ptr);

AddressRangeFn address_range_fn() {
  static const AddressRangeFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<AddressRangeFn>(nullptr);
    }
    return reinterpret_cast<AddressRangeFn>(p);
  }();
  return fn;
}

// The op touches [ptr, ptr + bytes): that range must lie inside ptr's allocation. Raw pointers
// carry no size, so this is how the binding's size checks reach device memory: a buffer too small
// for the shapes given is refused instead of written past.
void check_extent(uintptr_t ptr, int64_t bytes, const char* name) {
  const AddressRangeFn fn = address_range_fn();
  if (!fn || bytes <= 0) return;
  unsigned long long base = 0;
  size_t size = 0;
  if (fn(&base, &size, static_cast<unsigned long long>(ptr)) != 0) return;  // check_pointer decides
  const unsigned long long end = base + size;
  if (ptr < base || static_cast<unsigned long long>(bytes) > end - ptr) {
    throw std::invalid_argument(std::string(name) + ": the op needs " + std::to_string(bytes) +
                                " bytes from this pointer, but its allocation holds only " +
                                std::to_string(ptr >= base && ptr < end ? end - ptr : 0));
  }
}

void check_pointer(uintptr_t ptr, int device, const char* name) {
  if (ptr == 0) throw std::invalid_argument(std::string(name) + ": null device pointer");
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this query
    throw std::invalid_argument(std::string(name) + ": not a CUDA pointer (" +
                                cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw std::invalid_argument(std::string(name) +
                                ": a host pointer where device memory is expected");
  }
  if (attr.device != device) {
    throw std::invalid_argument(std::string(name) + ": lives on cuda:" +
                                std::to_string(attr.device) + ", expected cuda:" +
                                std::to_string(device));
  }
}

// Makes `device` current for the op and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// A device pointer on `device` whose allocation holds `bytes` from it.
void check_buffer(uintptr_t ptr, int64_t bytes, int device, const char* name) {
  check_pointer(ptr, device, name);
  check_extent(ptr, bytes, name);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Shared memory a block needs to hold one permutation: its draws (reused for the ranks) and perm.
size_t permutation_smem_bytes(int64_t n) {
  return static_cast<size_t>(scratch_words(n) + n) * sizeof(int32_t);
}

// The block builds permutation k's ranks in shared memory: draws in parallel (one Philox block per
// thread), Fisher–Yates on thread 0 (serial by nature, n swaps in shared memory), ranks in
// parallel. `scratch` holds max(4 * draw_blocks(n), n) words and ends holding the ranks; `perm`
// holds n. Must be called by every thread of the block.
__device__ void block_permutation(uint64_t seed, int64_t k, int64_t n, int group,
                                  uint32_t* scratch, int32_t* perm) {
  const uint64_t base = permutation_base(k, group);
  const int64_t blocks = draw_blocks(n);
  for (int64_t j = threadIdx.x; j < blocks; j += blockDim.x) {
    draw_block(seed, base, static_cast<uint32_t>(j), scratch + 4 * j);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fisher_yates(scratch, n, perm);
    group_variant(perm, n, k, group);
  }
  __syncthreads();
  int32_t* rank = reinterpret_cast<int32_t*>(scratch);
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) rank[perm[t]] = static_cast<int32_t>(t);
  __syncthreads();
}

// One block per permutation k0 + blockIdx.x. Its workspace is shared memory, or (work non-null: n
// beyond shared memory) its slice of `work` [K, permutation_work_words(n)] in global memory, which
// then keeps the ranks and the permutation for the kernels that read them (permutation_of).
__global__ void permutations_kernel(uint64_t seed, int64_t k0, int64_t n, int group,
                                    int32_t* __restrict__ perm_out,   // [K, n] or null
                                    int32_t* __restrict__ rank_out,   // [K, n] or null
                                    int32_t* __restrict__ work) {     // [K, work words] or null
  extern __shared__ int32_t smem[];
  const int64_t kk = blockIdx.x;
  int32_t* base = work ? work + kk * permutation_work_words(n) : smem;
  uint32_t* scratch = reinterpret_cast<uint32_t*>(base);
  int32_t* perm = base + scratch_words(n);
  block_permutation(seed, k0 + kk, n, group, scratch, perm);
  const int32_t* rank = reinterpret_cast<const int32_t*>(scratch);
  if (!perm_out && !rank_out) return;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    if (perm_out) perm_out[kk * n + t] = perm[t];
    if (rank_out) rank_out[kk * n + t] = rank[t];
  }
}

// Permutation k's ranks and order for the calling block: read from the global workspace that
// permutations_kernel filled for the chunk's permutations from k_first (work non-null), or built
// now in this block's shared memory. Must be called by every thread of the block.
__device__ void permutation_of(uint64_t seed, int64_t k, int64_t n, int group,
                               const int32_t* work, int64_t k_first, int32_t* smem,
                               const int32_t** rank, const int32_t** perm) {
  if (work) {
    const int32_t* base = work + (k - k_first) * permutation_work_words(n);
    *rank = base;
    *perm = base + scratch_words(n);
    return;
  }
  int32_t* p = smem + scratch_words(n);
  block_permutation(seed, k, n, group, reinterpret_cast<uint32_t*>(smem), p);
  *rank = smem;
  *perm = p;
}

// One block per permutation of the chunk (blockIdx.x): it builds that permutation once in shared
// memory and writes every evaluation of the chunk that uses it (up to n - 1 of them). Each
// evaluation's elements are split across gridDim.y, so the Fisher–Yates cost is paid once per
// (permutation, slice) and amortised over (n - 1) * slice elements.
constexpr int kThreads = 256;

// First and last+1 evaluation of permutation k inside the chunk [e0, e1).
__device__ __forceinline__ void evals_of_permutation(int64_t k, int64_t n, int64_t e0, int64_t e1,
                                                     int64_t* first, int64_t* last) {
  const int64_t per = evals_per_permutation(n);
  *first = max(e0, k * per);
  *last = min(e1, (k + 1) * per);
}

__global__ void masks_kernel(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                             bool* __restrict__ out,       // [B, n]
                             const int32_t* __restrict__ work) {
  extern __shared__ int32_t smem[];
  const int64_t k_first = eval_index(e0, n).k;
  const int64_t k = k_first + blockIdx.x;
  const int32_t *rank, *perm;
  permutation_of(seed, k, n, group, work, k_first, smem, &rank, &perm);
  int64_t first, last;
  evals_of_permutation(k, n, e0, e1, &first, &last);
  for (int64_t e = first; e < last; ++e) {
    const int64_t t = eval_index(e, n).t;
    for (int64_t p = threadIdx.x; p < n; p += blockDim.x) out[(e - e0) * n + p] = in_prefix(rank[p], t);
  }
}

// Player `id` is in the prefix of size t; ids outside [0, n) count as absent (a raw call with a bad
// player map reads no memory past the ranks).
__device__ __forceinline__ bool player_in(const int32_t* rank, int32_t id, int64_t n, int64_t t) {
  return static_cast<uint64_t>(static_cast<uint32_t>(id)) < static_cast<uint64_t>(n) && in_prefix(rank[id], t);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// The fused kernel. V elements per thread step (16-byte loads and stores when V * sizeof(T) = 16);
// kKeepSmem: the eval's keep flags for one period of `inner` players (plus V - 1 wrapped) are
// staged in shared memory, else each element looks its player's rank up.
template <typename T, bool kScalarBaseline, int V, bool kKeepSmem>
__global__ void __launch_bounds__(kThreads)
masked_apply_kernel(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                    const T* __restrict__ x,              // [outer, inner]
                    int64_t outer, int64_t inner,
                    const int32_t* __restrict__ players,  // [inner]
                    const T* __restrict__ baseline,       // [outer, inner] unless scalar
                    T baseline_scalar,
                    T* __restrict__ out,                  // [B, outer, inner]
                    int64_t slice,                        // elements per blockIdx.y (multiple of V)
                    int64_t groups, int64_t group_evals,  // blockIdx.x = perm * groups + group
                    const int32_t* __restrict__ work,     // global permutations, or null
                    size_t keep_offset) {                 // bytes to keep in smem
  static_assert(kKeepSmem || V == 1, "the per-element rank lookup path is scalar");
  extern __shared__ int32_t smem[];
  uint8_t* keep = reinterpret_cast<uint8_t*>(smem) + keep_offset;  // [inner + V - 1] when kKeepSmem
  const int64_t k_first = eval_index(e0, n).k;
  const int64_t k = k_first + blockIdx.x / groups;
  const int64_t g = blockIdx.x % groups;
  int64_t first, last;
  evals_of_permutation(k, n, e0, e1, &first, &last);
  // This block's group of the permutation's evaluations (t-1 in [g*G, (g+1)*G)).
  first = max(first, k * evals_per_permutation(n) + g * group_evals);
  last = min(last, k * evals_per_permutation(n) + (g + 1) * group_evals);
  if (first >= last) return;  // uniform across the block
  const int32_t *rank, *perm;
  permutation_of(seed, k, n, group, work, k_first, smem, &rank, &perm);
  const int64_t numel = outer * inner;
  const int64_t i0 = blockIdx.y * slice;
  // Inside the slice, 32-bit offsets (numel < 2^31 is checked by the launcher): fewer registers.
  const int32_t len = static_cast<int32_t>(min(numel, i0 + slice) - i0);
  const int32_t start = static_cast<int32_t>(threadIdx.x) * V;
  const int32_t stride = static_cast<int32_t>(blockDim.x) * V;
  const int32_t inner32 = static_cast<int32_t>(inner);
  const int32_t stride_j = stride % inner32;  // j = i % inner advances by increment and wrap
  const int32_t j_start = static_cast<int32_t>((i0 + start) % inner);
  const T* xs = x + i0;
  const T* bs = kScalarBaseline ? nullptr : baseline + i0;
  for (int64_t e = first; e < last; ++e) {
    const int64_t t = eval_index(e, n).t;
    if (kKeepSmem) {
      __syncthreads();  // the previous eval's readers are done with keep
      for (int32_t j = threadIdx.x; j < inner32 + V - 1; j += blockDim.x) {
        keep[j] = player_in(rank, __ldg(players + j % inner32), n, t);
      }
      __syncthreads();
    }
    T* dst = out + (e - e0) * numel + i0;
    int32_t j = j_start;
    for (int32_t i = start; i < len; i += stride) {
      Pack<T, V> xv = *reinterpret_cast<const Pack<T, V>*>(xs + i);
      Pack<T, V> bv;
      if (!kScalarBaseline) bv = *reinterpret_cast<const Pack<T, V>*>(bs + i);
      Pack<T, V> r;
#pragma unroll
      for (int q = 0; q < V; ++q) {
        const bool kq = kKeepSmem ? keep[j + q] != 0 : player_in(rank, __ldg(players + j), n, t);
        r.v[q] = kq ? xv.v[q] : (kScalarBaseline ? baseline_scalar : bv.v[q]);
      }
      *reinterpret_cast<Pack<T, V>*>(dst + i) = r;
      j += stride_j;
      if (j >= inner32) j -= inner32;
    }
  }
}

// The incremental prefix walk (walk.h): one block per permutation of the chunk; the block builds
// the permutation's ranks in shared memory, then each thread walks its own dimensions j of z
// (kept in shared memory) from the empty coalition, writing the evaluations inside the chunk.
// No synchronisation after the permutation: a thread only ever touches its own j.
template <typename T>
__global__ void prefix_walk_kernel(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                                   const T* __restrict__ tables,       // [cells, 2^size, d]
                                   int64_t cells, int64_t size, int64_t d,
                                   const int32_t* __restrict__ members,  // [cells, size]
                                   const int32_t* __restrict__ cell_of,  // [n]
                                   const T* __restrict__ z_empty,       // [d]
                                   T* __restrict__ out,                 // [B, d]
                                   size_t z_offset,                     // bytes to z in smem
                                   const int32_t* __restrict__ work) {  // global permutations, or null
  extern __shared__ int32_t smem[];
  T* z = reinterpret_cast<T*>(reinterpret_cast<char*>(smem) + z_offset);
  const int64_t per = evals_per_permutation(n);
  const int64_t k_first = eval_index(e0, n).k;
  const int64_t k = k_first + blockIdx.x;
  const int32_t *rank, *perm;
  permutation_of(seed, k, n, group, work, k_first, smem, &rank, &perm);
  const int64_t subsets = int64_t(1) << size;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) z[j] = z_empty[j];
  const int64_t last_t = min(per, e1 - k * per);
  for (int64_t t = 1; t <= last_t; ++t) {
    const int64_t c = cell_of[perm[t - 1]];
    if (c >= 0 && c < cells) {  // the host builds cell_of valid; a bad raw argument reads nothing
      walk_to(tables, subsets, d, members, size, c, rank, n, t, threadIdx.x, blockDim.x, z);
    }
    const int64_t e = k * per + (t - 1);
    if (e >= e0) {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[(e - e0) * d + j] = z[j];
    }
  }
}

__global__ void accumulate_kernel(int64_t n_samples, int64_t n, int64_t m, int group,
                                  const int32_t* __restrict__ rank,    // [P, n]
                                  const double* __restrict__ values,   // [P * (n - 1), m]
                                  const double* __restrict__ v_empty,  // [m]
                                  const double* __restrict__ v_full,   // [m]
                                  int64_t count0,
                                  double* __restrict__ mean,           // [n, m]
                                  double* __restrict__ m2,             // [n, m]
                                  int64_t block,
                                  double* __restrict__ base_mean,      // [n, m] when block > 0
                                  double* __restrict__ base_m2) {      // [n, m] when block > 0
  const int64_t cell = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (cell >= n * m) return;
  accumulate_cell(values, v_empty, v_full, rank, n_samples, n, m, group, cell / m, cell % m,
                  count0, mean, m2, block, base_mean, base_m2);
}

size_t smem_limit(int device) {
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  return static_cast<size_t>(optin);
}

// Grid dimensions are 32-bit: refuse work that would need more blocks than a launch has.
void check_grid(int64_t blocks, const char* what) {
  if (blocks > 0x7fffffff) {
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(blocks) +
                                " blocks in one launch (limit 2^31 - 1); split the range");
  }
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "cudaFuncSetAttribute");
  }
}

void check_players(int device, int64_t n) {
  const int64_t limit = max_players(device);
  if (n > limit) {
    throw std::invalid_argument("n_players = " + std::to_string(n) + " is beyond the " +
                                std::to_string(limit) + " players whose permutation fits in this "
                                "device's shared memory: pass a global workspace (work=; "
                                "shapcam.ops does)");
  }
}

// The permutations of a launch (perms of them from k_first): null when each block builds its own
// in shared memory (work = 0; n must fit), else `work` — the caller's device memory,
// [perms, permutation_work_words(n)] int32 — filled here, one block per permutation, on the
// launch's stream, for the kernel that follows to read (permutation_of).
const int32_t* global_permutations(int device, cudaStream_t stream, uint64_t seed, int64_t k_first,
                                   int64_t perms, int64_t n, int group, uintptr_t work) {
  if (!work) {
    check_players(device, n);
    return nullptr;
  }
  check_buffer(work, perms * permutation_work_words(n) * static_cast<int64_t>(sizeof(int32_t)),
               device, "work");  // sizes overflow-checked by the binding
  check_grid(perms, "permutations");
  permutations_kernel<<<static_cast<unsigned>(perms), kThreads, 0, stream>>>(
      seed, k_first, n, group, nullptr, nullptr, reinterpret_cast<int32_t*>(work));
  check_launch("permutations_kernel");
  return reinterpret_cast<const int32_t*>(work);
}

// Shared memory a block needs for its permutation: none when it is read from global memory.
size_t perm_smem(const int32_t* work, int64_t n) { return work ? 0 : permutation_smem_bytes(n); }

// Largest player period whose keep flags are staged in shared memory.
constexpr int64_t kMaxKeepSmem = 16384;

// Grid of the fused kernel: blockIdx.y splits each eval's elements into slices (at least two
// V-wide steps per thread), blockIdx.x walks (permutation, group of its evals). Groups split a
// permutation's evals only as much as needed for ~4 waves of resident blocks, because each block
// pays one Fisher–Yates.
template <typename T, bool kScalar, int V, bool kKeep>
void launch_variant(cudaStream_t stream, int device, size_t smem, uint64_t seed, int64_t e0,
                    int64_t e1, int64_t n, int group, const T* x, int64_t outer,
                    int64_t inner, const int32_t* players, const T* baseline, T bscalar, T* out,
                    const int32_t* work) {
  auto kernel = masked_apply_kernel<T, kScalar, V, kKeep>;
  allow_smem(kernel, smem);
  int sms = 0, per_sm = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const int64_t target = 4 * std::max<int64_t>(1, static_cast<int64_t>(sms) * per_sm);
  const int64_t numel = outer * inner;
  const int64_t per = evals_per_permutation(n);
  const int64_t perms = eval_index(e1 - 1, n).k - eval_index(e0, n).k + 1;
  const int64_t max_slices = std::min<int64_t>(65535, std::max<int64_t>(1, numel / (kThreads * V * 2)));
  const int64_t slices = std::min<int64_t>(max_slices, std::max<int64_t>(1, (target + perms - 1) / perms));
  int64_t slice = (numel + slices - 1) / slices;
  slice = (slice + V - 1) / V * V;
  const int64_t y = (numel + slice - 1) / slice;
  int64_t groups = std::min<int64_t>(per, std::max<int64_t>(1, (target + perms * y - 1) / (perms * y)));
  const int64_t group_evals = (per + groups - 1) / groups;
  groups = (per + group_evals - 1) / group_evals;
  check_grid(perms * groups, "masked_apply");
  const dim3 grid(static_cast<unsigned>(perms * groups), static_cast<unsigned>(y));
  kernel<<<grid, kThreads, smem, stream>>>(seed, e0, e1, n, group, x, outer, inner, players,
                                           baseline, bscalar, out, slice, groups, group_evals,
                                           work, perm_smem(work, n));
  check_launch("masked_apply_kernel");
}

template <typename T, bool kScalar>
void launch_masked_apply_b(cudaStream_t stream, int device, uint64_t seed, int64_t e0, int64_t e1,
                           int64_t n, int group, const T* x, int64_t outer, int64_t inner,
                           const int32_t* players, const T* baseline, T bscalar, T* out,
                           const int32_t* work) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t numel = outer * inner;  // < 2^31: checked by masked_apply
  // The keep flags (inner + V bytes) sit in shared memory beside the permutation only where both
  // fit the device's per-block limit; otherwise each element looks its player's rank up.
  const bool keep_smem = inner <= kMaxKeepSmem &&
                         perm_smem(work, n) + inner + kVec <= smem_limit(device);
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = keep_smem && numel % kVec == 0 && aligned(x) && aligned(out) &&
                   (kScalar || aligned(baseline));
  const size_t smem = perm_smem(work, n) + (keep_smem ? inner + kVec : 0);
  if (vec) {
    launch_variant<T, kScalar, kVec, true>(stream, device, smem, seed, e0, e1, n, group, x,
                                           outer, inner, players, baseline, bscalar, out, work);
  } else if (keep_smem) {
    launch_variant<T, kScalar, 1, true>(stream, device, smem, seed, e0, e1, n, group, x,
                                        outer, inner, players, baseline, bscalar, out, work);
  } else {
    launch_variant<T, kScalar, 1, false>(stream, device, smem, seed, e0, e1, n, group, x,
                                         outer, inner, players, baseline, bscalar, out, work);
  }
}

template <typename T>
void launch_masked_apply(cudaStream_t stream, int device, uint64_t seed, int64_t e0, int64_t e1,
                         int64_t n, int group, const T* x, int64_t outer, int64_t inner,
                         const int32_t* players, const T* baseline, T baseline_scalar, T* out,
                         const int32_t* work) {
  if (baseline) {
    launch_masked_apply_b<T, false>(stream, device, seed, e0, e1, n, group, x, outer, inner,
                                    players, baseline, baseline_scalar, out, work);
  } else {
    launch_masked_apply_b<T, true>(stream, device, seed, e0, e1, n, group, x, outer, inner,
                                   players, baseline, baseline_scalar, out, work);
  }
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int64_t max_players(int device) {
  // permutation_smem_bytes(n) is about 8n bytes (+ 12 for draw padding).
  return std::max<int64_t>(2, static_cast<int64_t>(smem_limit(device)) / 8 - 8);
}

void permutations(int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t k1, int64_t n,
                  int group, uintptr_t perm, uintptr_t rank, uintptr_t work) {
  if (k1 <= k0) return;
  if (!perm && !rank) return;
  const DeviceGuard guard(device);
  if (!work) check_players(device, n);
  check_grid(k1 - k0, "permutations");
  const int64_t bytes = (k1 - k0) * n * static_cast<int64_t>(sizeof(int32_t));
  if (perm) check_buffer(perm, bytes, device, "perm");
  if (rank) check_buffer(rank, bytes, device, "rank");
  if (work) {
    check_buffer(work, (k1 - k0) * permutation_work_words(n) * static_cast<int64_t>(sizeof(int32_t)),
                 device, "work");
  }
  const size_t smem = work ? 0 : permutation_smem_bytes(n);
  allow_smem(permutations_kernel, smem);
  permutations_kernel<<<static_cast<unsigned>(k1 - k0), kThreads, smem, as_stream(stream)>>>(
      seed, k0, n, group, reinterpret_cast<int32_t*>(perm), reinterpret_cast<int32_t*>(rank),
      reinterpret_cast<int32_t*>(work));
  check_launch("permutations_kernel");
}

void masks(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
           int group, uintptr_t out, uintptr_t work) {
  if (e1 <= e0) return;
  const DeviceGuard guard(device);
  check_buffer(out, (e1 - e0) * n, device, "out");
  const int64_t perms = eval_index(e1 - 1, n).k - eval_index(e0, n).k + 1;
  check_grid(perms, "masks");
  const cudaStream_t s = as_stream(stream);
  const int32_t* w = global_permutations(device, s, seed, eval_index(e0, n).k, perms, n, group, work);
  const size_t smem = perm_smem(w, n);
  allow_smem(masks_kernel, smem);
  masks_kernel<<<static_cast<unsigned>(perms), kThreads, smem, s>>>(
      seed, e0, e1, n, group, reinterpret_cast<bool*>(out), w);
  check_launch("masks_kernel");
}

void masked_apply(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
                  int group, int dtype_bytes, uintptr_t x, int64_t outer, int64_t inner,
                  uintptr_t players, uintptr_t baseline, double baseline_scalar, uintptr_t out,
                  uintptr_t work) {
  if (e1 <= e0) return;
  const DeviceGuard guard(device);
  const int64_t numel = outer * inner;  // overflow-checked by the binding
  check_buffer(x, numel * dtype_bytes, device, "x");
  check_buffer(players, inner * static_cast<int64_t>(sizeof(int32_t)), device, "players");
  if (baseline) check_buffer(baseline, numel * dtype_bytes, device, "baseline");
  check_buffer(out, (e1 - e0) * numel * dtype_bytes, device, "out");
  if (dtype_bytes != 4 && dtype_bytes != 8) {
    throw std::invalid_argument("x: dtype must be float32 or float64");
  }
  if (numel >= (int64_t(1) << 31)) {
    throw std::invalid_argument("x: the CUDA engine takes inputs of fewer than 2^31 elements");
  }
  const auto* pl = reinterpret_cast<const int32_t*>(players);
  const cudaStream_t s = as_stream(stream);
  const int64_t perms = eval_index(e1 - 1, n).k - eval_index(e0, n).k + 1;
  const int32_t* w = global_permutations(device, s, seed, eval_index(e0, n).k, perms, n, group, work);
  if (dtype_bytes == 4) {
    launch_masked_apply<float>(s, device, seed, e0, e1, n, group,
                               reinterpret_cast<const float*>(x), outer, inner, pl,
                               reinterpret_cast<const float*>(baseline),
                               static_cast<float>(baseline_scalar), reinterpret_cast<float*>(out), w);
  } else {
    launch_masked_apply<double>(s, device, seed, e0, e1, n, group,
                                reinterpret_cast<const double*>(x), outer, inner, pl,
                                reinterpret_cast<const double*>(baseline), baseline_scalar,
                                reinterpret_cast<double*>(out), w);
  }
}

void prefix_walk(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
                 int group, int dtype_bytes, uintptr_t tables, int64_t cells, int64_t size,
                 int64_t d, uintptr_t members, uintptr_t cell_of, uintptr_t z_empty, uintptr_t out,
                 uintptr_t work) {
  if (e1 <= e0) return;
  const DeviceGuard guard(device);
  if (!work) check_players(device, n);
  // sizes overflow-checked by the binding
  check_buffer(tables, cells * (int64_t(1) << size) * d * dtype_bytes, device, "tables");
  check_buffer(members, cells * size * static_cast<int64_t>(sizeof(int32_t)), device, "members");
  check_buffer(cell_of, n * static_cast<int64_t>(sizeof(int32_t)), device, "cell_of");
  check_buffer(z_empty, d * dtype_bytes, device, "z_empty");
  check_buffer(out, (e1 - e0) * d * dtype_bytes, device, "out");
  const size_t z_offset = work ? 0 : (permutation_smem_bytes(n) + 15) / 16 * 16;
  const size_t smem = z_offset + static_cast<size_t>(d) * dtype_bytes;
  if (smem > smem_limit(device)) {
    throw std::invalid_argument("prefix_walk: n = " + std::to_string(n) + " players and d = " +
                                std::to_string(d) + " dimensions need " + std::to_string(smem) +
                                " bytes of shared memory; this device has " +
                                std::to_string(smem_limit(device)));
  }
  const int64_t perms = eval_index(e1 - 1, n).k - eval_index(e0, n).k + 1;
  check_grid(perms, "prefix_walk");
  const auto* mp = reinterpret_cast<const int32_t*>(members);
  const auto* cp = reinterpret_cast<const int32_t*>(cell_of);
  const cudaStream_t s = as_stream(stream);
  if (dtype_bytes != 4 && dtype_bytes != 8) {
    throw std::invalid_argument("tables: dtype must be float32 or float64");
  }
  const int32_t* w = global_permutations(device, s, seed, eval_index(e0, n).k, perms, n, group, work);
  if (dtype_bytes == 4) {
    allow_smem(prefix_walk_kernel<float>, smem);
    prefix_walk_kernel<float><<<static_cast<unsigned>(perms), kThreads, smem, s>>>(
        seed, e0, e1, n, group, reinterpret_cast<const float*>(tables), cells, size, d, mp, cp,
        reinterpret_cast<const float*>(z_empty), reinterpret_cast<float*>(out), z_offset, w);
  } else {
    allow_smem(prefix_walk_kernel<double>, smem);
    prefix_walk_kernel<double><<<static_cast<unsigned>(perms), kThreads, smem, s>>>(
        seed, e0, e1, n, group, reinterpret_cast<const double*>(tables), cells, size, d, mp,
        cp, reinterpret_cast<const double*>(z_empty), reinterpret_cast<double*>(out), z_offset, w);
  }
  check_launch("prefix_walk_kernel");
}

void accumulate(int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t n_samples,
                int64_t n, int64_t m, int group, uintptr_t values, uintptr_t v_empty,
                uintptr_t v_full, int64_t count0, uintptr_t mean, uintptr_t m2, uintptr_t scratch,
                int64_t block, uintptr_t base_mean, uintptr_t base_m2, uintptr_t work) {
  if (n_samples <= 0) return;
  const DeviceGuard guard(device);
  if (!work) check_players(device, n);
  const int64_t P = n_samples * permutations_per_sample(group);  // sizes checked by the binding
  check_grid(P, "accumulate");
  check_buffer(values, P * (n - 1) * m * 8, device, "values");
  check_buffer(v_empty, m * 8, device, "v_empty");
  check_buffer(v_full, m * 8, device, "v_full");
  check_buffer(mean, n * m * 8, device, "mean");
  check_buffer(m2, n * m * 8, device, "m2");
  check_buffer(scratch, P * n * static_cast<int64_t>(sizeof(int32_t)), device, "scratch");
  if (block > 0) {
    check_buffer(base_mean, n * m * 8, device, "base_mean");
    check_buffer(base_m2, n * m * 8, device, "base_m2");
  }
  const cudaStream_t s = as_stream(stream);
  int32_t* rank = reinterpret_cast<int32_t*>(scratch);
  if (work) {
    check_buffer(work, P * permutation_work_words(n) * static_cast<int64_t>(sizeof(int32_t)), device,
                 "work");
  }
  const size_t smem = work ? 0 : permutation_smem_bytes(n);
  allow_smem(permutations_kernel, smem);
  permutations_kernel<<<static_cast<unsigned>(P), kThreads, smem, s>>>(
      seed, k0, n, group, nullptr, rank, reinterpret_cast<int32_t*>(work));
  check_launch("permutations_kernel");
  const int64_t cells = n * m;
  check_grid((cells + 127) / 128, "accumulate");
  accumulate_kernel<<<static_cast<unsigned>((cells + 127) / 128), 128, 0, s>>>(
      n_samples, n, m, group, rank, reinterpret_cast<const double*>(values),
      reinterpret_cast<const double*>(v_empty), reinterpret_cast<const double*>(v_full), count0,
      reinterpret_cast<double*>(mean), reinterpret_cast<double*>(m2), block,
      reinterpret_cast<double*>(base_mean), reinterpret_cast<double*>(base_m2));
  check_launch("accumulate_kernel");
}

}  // namespace cuda
}  // namespace shapcam
