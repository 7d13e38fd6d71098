# napari-s2s: `make demo` sets everything up and opens napari with the plugin and the sample data
# (without a display: the headless annotation of the sample data);
# `make test` sets everything up and runs the test suite (headless, under Xvfb).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0, CPU build where the package index offers it (it does on our machines); for the
# several-GB CUDA build, point pip at a CUDA wheel index: make setup TORCH_PIP_ARGS="--index-url URL".
TORCH_PIP_ARGS ?=

.PHONY: setup system-deps demo test benchmarks clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	touch $@

# Xvfb and the X/xcb libraries Qt needs, installed with apt-get when run as root and missing.
system-deps:
	@bash .ci/system-deps.sh

demo: setup
	$(PY) -m napari_s2s.demo --out out/plugin_demo

test: setup system-deps
	QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) -m pytest -q

# The speed benchmarks (minutes each; not part of the tests). The accuracy table: s2s benchmark.
benchmarks: setup system-deps
	$(PY) benchmarks/measure.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/pairs.py
	QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) benchmarks/plugin.py

clean:
	rm -rf $(VENV) out build *.egg-info
