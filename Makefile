# Two commands do all the set-up: `make book` builds the book, `make test` runs every check.
# Each creates .venv and installs requirements.txt and the package (editable) when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test lint unit notebooks strict-book bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## book: execute every notebook and build the HTML book into _build/html (offline)
book: $(STAMP)
	$(BIN)/jupyter-book build --keep-going .
	@echo "The book is in _build/html/index.html"

## test: ruff, unit tests, nbval on every notebook (quick mode), strict book build
test: lint unit notebooks strict-book

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	SAGAN_TUTORIAL_QUICK=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg book/

# Warnings are errors and a cell error fails the build; built apart from _build/html.
strict-book: $(STAMP)
	SAGAN_TUTORIAL_QUICK=1 $(BIN)/jupyter-book build -W --keep-going --path-output _build/strict .

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

clean:
	rm -rf _build .pytest_cache .ruff_cache
