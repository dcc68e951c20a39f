# The README's two commands: `make demo` and `make test`. Each builds its own .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
export OMP_NUM_THREADS ?= 2

.PHONY: demo test bench lint clean venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin the CPU build of torch that lies on this disk for the whole resolution: a bare
	# `torch` range (or torchvision, which litdata lists) would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]" "torch==$(TORCH_VERSION)"
	# litdata lists torchvision, but only uses it for image/video serializers flowvq does not
	# use, and PyPI's torchvision breaks `import lightning` beside the CPU torch build.
	$(PIP) uninstall -q -y torchvision || true
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/flowvq demo --out runs/demo

test: venv
	$(VENV)/bin/pytest -q

bench: venv
	$(PY) benchmarks/run.py

lint: venv
	$(VENV)/bin/ruff check flowvq tests benchmarks
	$(VENV)/bin/ruff format --check flowvq tests benchmarks

clean:
	rm -rf $(VENV) runs data .pytest_cache
