"""Build shapcam's native engine shapcam._C (pybind11; CUDA when nvcc is found).

The package metadata, dependencies and version live in pyproject.toml (the version in
shapcam/_version.py); this file only builds the extension, so `pip install .`, `pip wheel .` and
an sdist install all take the same path (build isolation brings setuptools and pybind11).

Environment overrides:
  SHAPCAM_CUDA=0|1|auto   compile the CUDA sources (auto: when nvcc is found; 1: fail without it)
  SHAPCAM_CUDA_ARCH       semicolon list of compute capabilities, default "80;90" (+ PTX of the last)
  SHAPCAM_NATIVE=0        skip the extension altogether (pure-Python install)
  CUDA_HOME / NVCC        where the toolkit / nvcc is
  SHAPCAM_OPENMP=0|1|auto threads in the CPU ops (auto: when the compiler accepts -fopenmp)
  SHAPCAM_SANITIZE=1      build with AddressSanitizer + UBSan (-O1 -g; for `make sanitize`)
C++ sources compile in parallel (pybind11's ParallelCompile); CUDA sources with nvcc, in parallel.
A compiler without OpenMP still builds the engine, single-threaded, and says so.
"""
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _env_flag(name, default="auto"):
    return os.environ.get(name, default).strip().lower()


def find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if not nvcc and os.environ.get("CUDA_HOME"):
        cand = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(cand) if cand.exists() else None
    return nvcc


def cuda_lib_dir(nvcc):
    """Directory holding libcudart_static.a: CUDA_HOME, or where nvcc says it lives."""
    roots = []
    if os.environ.get("CUDA_HOME"):
        roots.append(Path(os.environ["CUDA_HOME"]))
    try:  # nvcc may be a wrapper script; its dry run names the real toolkit directory.
        out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True).stderr
        out += subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                              capture_output=True, text=True).stderr
        m = re.search(r"_HERE_=(\S+)", out)
        if m:
            roots.append(Path(m.group(1)).parent)
    except OSError:
        pass
    roots += [Path(nvcc).resolve().parent.parent, Path("/usr/local/cuda")]
    for root in roots:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if (root / sub / "libcudart_static.a").exists():
                return str(root / sub)
    raise RuntimeError(f"nvcc at {nvcc} but no libcudart_static.a under {roots}; set CUDA_HOME")


def compiler_has_openmp(compiler) -> bool:
    """Whether the C++ compiler compiles and links a tiny OpenMP program with -fopenmp."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp_probe.cpp"
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, str(Path(tmp) / "omp_probe"), extra_postargs=["-fopenmp"])
        except Exception:  # CompileError, LinkError, or a compiler that cannot run at all
            return False
    return True


def build_extension():
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext

    ParallelCompile("SHAPCAM_BUILD_JOBS", default=0).install()

    want_cuda = _env_flag("SHAPCAM_CUDA")
    nvcc = find_nvcc() if want_cuda != "0" else None
    if want_cuda == "1" and not nvcc:
        raise RuntimeError("SHAPCAM_CUDA=1 but nvcc was not found (set NVCC or CUDA_HOME)")
    with_cuda = bool(nvcc)

    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cpp"))
    cu_sources = sorted(CSRC.rglob("*.cu"))
    ext = Pybind11Extension(
        "shapcam._C",
        sources,
        include_dirs=[str(CSRC), str(CSRC / "include")],
        cxx_std=17,
        extra_compile_args=["-O3", "-ffp-contract=off"],
        depends=sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.h")),
        define_macros=[("SHAPCAM_WITH_CUDA", "1")] if with_cuda else [],
    )

    class BuildExt(build_ext):
        def build_extensions(self):
            want_omp = _env_flag("SHAPCAM_OPENMP")
            omp = want_omp != "0" and compiler_has_openmp(self.compiler)
            if want_omp == "1" and not omp:
                raise RuntimeError("SHAPCAM_OPENMP=1 but the C++ compiler does not accept -fopenmp")
            if not omp:
                print("shapcam: building the native engine without OpenMP (single-threaded CPU ops)"
                      + ("" if want_omp == "0" else ": the compiler does not accept -fopenmp"),
                      flush=True)
            sanitize = _env_flag("SHAPCAM_SANITIZE", "0") == "1"
            for e in self.extensions:
                if sanitize:
                    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                             "-fno-omit-frame-pointer", "-g", "-O1"]
                    e.extra_compile_args = [a for a in e.extra_compile_args if a != "-O3"] + flags
                    e.extra_link_args = list(e.extra_link_args or []) + flags[:2]
                if omp:
                    e.extra_compile_args = list(e.extra_compile_args) + ["-fopenmp"]
                    e.extra_link_args = list(e.extra_link_args or []) + ["-fopenmp"]
            if with_cuda:
                objects = self._compile_cuda()
                for e in self.extensions:
                    e.extra_objects = list(e.extra_objects or []) + objects
                    libdir = cuda_lib_dir(nvcc)
                    e.library_dirs = list(e.library_dirs or []) + [libdir]
                    e.libraries = list(e.libraries or []) + ["cudart_static", "dl", "rt", "pthread"]
            super().build_extensions()

        def _compile_cuda(self):
            archs = [a.strip().replace(".", "") for a in
                     os.environ.get("SHAPCAM_CUDA_ARCH", "80;90").split(";") if a.strip()]
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            out_dir = Path(self.build_temp) / "cuda"
            out_dir.mkdir(parents=True, exist_ok=True)

            headers = list(CSRC.rglob("*.h"))

            def one(src):
                obj = out_dir / (src.stem + ".o")
                newest = max(p.stat().st_mtime for p in [src, *headers])
                if obj.exists() and obj.stat().st_mtime >= newest and not self.force:
                    return str(obj)
                cmd = [nvcc, "-c", str(src), "-o", str(obj), "-std=c++17", "-O3", "--fmad=false",
                       "-Xcompiler", "-fPIC", "-I", str(CSRC), "-I", str(CSRC / "include"),
                       "-DSHAPCAM_WITH_CUDA=1", *gencode]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
                return str(obj)

            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                return list(pool.map(one, cu_sources))

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = ([], {}) if _env_flag("SHAPCAM_NATIVE", "1") == "0" else build_extension()

# Metadata, dependencies, the console script and package data: pyproject.toml.
setup(ext_modules=ext_modules, cmdclass=cmdclass, zip_safe=False)
