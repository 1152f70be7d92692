"""Build shapcam and its native engine shapcam._C (pybind11; CUDA when nvcc is found).

Environment overrides:
  SHAPCAM_CUDA=0|1|auto   compile the CUDA sources (auto: when nvcc is found; 1: fail without it)
  SHAPCAM_CUDA_ARCH       semicolon list of compute capabilities, default "80;90" (+ PTX of the last)
  SHAPCAM_NATIVE=0        skip the extension altogether (pure-Python install)
  CUDA_HOME / NVCC        where the toolkit / nvcc is
C++ sources compile in parallel (pybind11's ParallelCompile); CUDA sources with nvcc, in parallel.
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
    common_flags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    ext = Pybind11Extension(
        "shapcam._C",
        sources,
        include_dirs=[str(CSRC), str(CSRC / "include")],
        cxx_std=17,
        extra_compile_args=common_flags,
        extra_link_args=["-fopenmp"],
        depends=sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.h")),
        define_macros=[("SHAPCAM_WITH_CUDA", "1")] if with_cuda else [],
    )

    class BuildExt(build_ext):
        def build_extensions(self):
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

setup(
    name="shapcam",
    version="0.1.0",
    description="Fast, honest Shapley values (permutation sampling with standard errors) and Shap-CAM",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["shapcam", "shapcam.*"]),
    package_data={"shapcam": ["data/*.pt", "data/*.npz"]},
    python_requires=">=3.9",
    install_requires=["numpy>=1.22"],
    extras_require={
        "torch": ["torch>=2.0", "pillow", "tqdm"],
        "test": ["pytest", "hypothesis", "scipy", "torch>=2.0", "torchvision", "scikit-learn",
                 "grad-cam"],
        "bench": ["pytest-benchmark", "torch>=2.0"],
    },
    ext_modules=ext_modules,
    entry_points={"console_scripts": ["shapcam = shapcam.cli:main"]},
    cmdclass=cmdclass,
    zip_safe=False,
)
