# Two commands do all the set-up on a fresh machine (see README):
#   make demo   install into .venv, then run the built-in default end to end
#   make test   install into .venv, then run the test suite
# and, for development:
#   make test-fast    the suite without the tests marked slow (a few minutes on 2 cores)
#   make docs         the documentation site into site/ (mkdocs build --strict: a broken link fails)
#   make constraints  record the installed versions in constraints/ci.txt
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile
PYTEST_ARGS ?=  # e.g. --durations=25 (.ci/run), -x, -k NAME

.PHONY: demo test test-fast docs bench install constraints clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit demo --out runs/demo --overwrite --gate-config configs/gate.yaml

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only

constraints: $(STAMP)
	{ sed -n '/^#/p' constraints/ci.txt; $(BIN)/pip freeze --exclude-editable | grep -iv '^edgekit'; } > constraints/ci.txt.new
	mv constraints/ci.txt.new constraints/ci.txt

clean:
	rm -rf $(VENV) runs site .pytest_cache .benchmarks
