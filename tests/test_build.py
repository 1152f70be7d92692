"""Build, import and fallback: importing never builds; without shapcam._C the reference works."""
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

import shapcam

# Subprocesses run outside the source tree: `python -c/-m` puts the cwd on sys.path, and the
# tests are about the installed package.
ROOT = tempfile.gettempdir()


def test_engine_info_keys():
    info = shapcam.engine_info()
    for key in ("native", "cuda_built", "cuda_available"):
        assert isinstance(info[key], bool)
    assert info["default_engine"] in ("native", "reference")
    if info["cuda_available"]:
        assert info["cuda_built"] and info["native"]


def test_works_without_the_extension():
    code = (
        "import sys; sys.modules['shapcam._C'] = None\n"  # makes `import shapcam._C` fail
        "import numpy as np, shapcam\n"
        "info = shapcam.engine_info()\n"
        "assert info['native'] is False and info['default_engine'] == 'reference', info\n"
        "assert 'shapcam._C' in info['error'], info\n"
        "w = np.arange(5.0)\n"
        "r = shapcam.estimate_shapley(lambda m: m @ w, 5, 8)\n"
        "assert r.engine == 'reference' and np.allclose(r.values, w)\n"
        "try:\n"
        "    shapcam.estimate_shapley(lambda m: m @ w, 5, 8, engine='native')\n"
        "except RuntimeError as e:\n"
        "    assert 'not available' in str(e)\n"
        "else:\n"
        "    raise AssertionError('engine=native without the extension must fail')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_does_not_load_the_extension():
    code = "import sys, shapcam; print('shapcam._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_native_matches_build_flags():
    info = shapcam.engine_info()
    if os.environ.get("SHAPCAM_EXPECT_NATIVE") == "1":
        assert info["native"], info["error"]
    if os.environ.get("SHAPCAM_EXPECT_CUDA_BUILT") == "1":
        assert info["cuda_built"]
    if info["native"]:
        from shapcam import _C

        assert _C.num_threads() >= 1
        r = np.empty((3, 4), dtype=np.int32)
        _C.permutations_cpu(1, 0, 3, 4, True, r, None)
        assert sorted(r[0].tolist()) == [0, 1, 2, 3]


def test_tests_import_the_installed_package():
    """Under `make test` (SHAPCAM_SOURCE_TREE set) the package must come from site-packages, not
    from the checkout: a test that passes by importing the source folder proves nothing about the
    wheel users install."""
    src = os.environ.get("SHAPCAM_SOURCE_TREE")
    if not src:
        pytest.skip("not run by `make test` (SHAPCAM_SOURCE_TREE unset)")
    pkg = os.path.realpath(os.path.dirname(shapcam.__file__))
    assert pkg != os.path.realpath(os.path.join(src, "shapcam")), pkg
    assert "site-packages" in pkg or "dist-packages" in pkg, pkg
    # the console script is the installed one too
    from importlib.metadata import entry_points, version

    assert version("shapcam") == shapcam.__version__
    scripts = [e for e in entry_points(group="console_scripts") if e.name == "shapcam"]
    assert scripts and scripts[0].value == "shapcam.cli:main"


def test_version_is_written_once():
    """pyproject.toml takes the version from shapcam/_version.py (dynamic), and nothing else
    writes it."""
    src = os.environ.get("SHAPCAM_SOURCE_TREE")
    if not src:
        pytest.skip("needs the checkout (SHAPCAM_SOURCE_TREE)")
    pyproject = open(os.path.join(src, "pyproject.toml")).read()
    assert 'dynamic = ["version"]' in pyproject and "shapcam._version.__version__" in pyproject
    setup_py = open(os.path.join(src, "setup.py")).read()
    assert "version=" not in setup_py


@pytest.mark.skipif(not os.environ.get("SHAPCAM_SOURCE_TREE"), reason="needs the checkout")
def test_builds_without_openmp(tmp_path):
    """A compiler without OpenMP still builds a working engine (single-threaded), with a message:
    the compiler here is wrapped so that it rejects -fopenmp, as one without OpenMP does. CUDA off
    to keep it short."""
    src = os.environ["SHAPCAM_SOURCE_TREE"]
    wrapper = tmp_path / "cc-no-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-fopenmp" ] && '
                       '{ echo "unsupported option -fopenmp" >&2; exit 1; }; done\nexec g++ "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, SHAPCAM_CUDA="0", CC=str(wrapper), CXX=str(wrapper),
               LDSHARED=f"{wrapper} -shared")
    env.pop("SHAPCAM_OPENMP", None)
    build = tmp_path / "build"
    out = subprocess.run([sys.executable, os.path.join(src, "setup.py"), "-q", "build_ext",
                          "--build-lib", str(build), "--build-temp", str(tmp_path / "tmp")],
                         capture_output=True, text=True, cwd=src, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "without OpenMP" in out.stdout and "does not accept -fopenmp" in out.stdout
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u, numpy as np\n"
            "import glob; so = glob.glob(sys.argv[1] + '/shapcam/_C*.so')[0]\n"
            "spec = u.spec_from_file_location('shapcam._C', so); m = u.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "r = np.empty((2, 5), np.int32); m.permutations_cpu(3, 0, 2, 5, True, r, None)\n"
            "print(m.num_threads(), sorted(r[0].tolist()), r[1].tolist() == r[0][::-1].tolist())")
    res = subprocess.run([sys.executable, "-c", code, str(build)], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(maxsplit=1)[0] == "1"
    assert "[0, 1, 2, 3, 4] True" in res.stdout
