# One entry point for set-up, the demo and the tests. `make demo` on a fresh machine creates the
# virtualenv, installs everything (CPU torch pinned by constraints.txt) and runs the demo.
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip call, build-isolation environments included, keeps the CPU torch wheel.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# DeepSpeed's CPU comm op is compiled once (~1 min) and cached here.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: setup demo test test-all bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/spiritlm demo

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/spiritlm bench vocab

clean:
	rm -rf $(VENV) .torch_extensions .pytest_cache .hypothesis
