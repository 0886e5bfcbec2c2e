# Two entry points on a fresh machine (see README):
#   make demo   - the main job end to end on the built-in example model
#   make test   - the full test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (a local wheel here): an unpinned torch requested by any
	# dependency would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/moai-export demo --out build/demo --force

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf build .pytest_cache
