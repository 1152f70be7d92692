// threads.h — the CPU ops' OpenMP team: its size and this thread's place in it (one thread when
// built without OpenMP). Per-thread scratch is allocated before a parallel region, never inside it:
// an exception (e.g. std::bad_alloc) thrown inside an OpenMP region cannot leave it and ends the
// process.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

namespace shapcam {
namespace cpu {

inline int team_size() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace shapcam
