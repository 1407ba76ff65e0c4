# Two commands do all the set-up: `make book` builds the book, `make test` runs every check.
# Each creates .venv and installs requirements.txt and the package (editable) when missing;
# `make test` also builds the package's wheel and installs it into a second, fresh environment
# (_build/testenv) where the notebooks run.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# make test: the wheel, the environment it is installed in, the notebooks' working folder,
# the strict build (its jupyter-cache is filled by the nbval run: the notebooks run once)
WHEELDIR := _build/wheel
TESTENV := _build/testenv
QUICK := _build/quick
STRICT := _build/strict
STRICT_CACHE := $(STRICT)/_build/.jupyter_cache

# make book: the jupyter-cache (_build/.jupyter_cache) is keyed by each notebook's code cells; this
# key of what else the outputs depend on empties it when it changes.
BOOK_KEY = $(shell cat requirements.txt pyproject.toml \
	$$(find sagan_tutorial -type f ! -path '*__pycache__*' | LC_ALL=C sort) | sha256sum | cut -c1-16) \
	device=$(SAGAN_TUTORIAL_DEVICE) quick=$(SAGAN_TUTORIAL_QUICK)

.PHONY: book test all-checks lint unit wheel notebooks strict-book browser-check bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt --no-compile
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## book: execute the notebooks whose code changed (all of them the first time) and build the
## HTML book into _build/html (offline)
book: $(STAMP)
	@mkdir -p _build
	@key="$(BOOK_KEY)"; if [ "$$(cat _build/.book-key 2>/dev/null)" != "$$key" ]; then \
		echo "book: first build, or the package, requirements or device changed: every notebook runs"; \
		rm -rf _build/.jupyter_cache _build/.doctrees; echo "$$key" > _build/.book-key; fi
	$(BIN)/jupyter-book build --keep-going .
	@echo "The book is in _build/html/index.html"

## test: ruff, unit tests, nbval on every notebook (quick mode, the package from its wheel in a
## fresh environment), a strict book build from those runs, every page in a browser.
## ruff runs first; the unit tests and the notebooks are independent and each keeps about one
## core busy, so they run side by side (make -j2), each with half the CPU's threads; each one's
## output is printed whole when it ends (a failure in one waits for the other to end). The
## recipes exec their commands, so that a signal to make reaches them.
HALF_THREADS := $(shell n=$$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null \
	|| sysctl -n hw.ncpu 2>/dev/null || echo 2); echo $$(( n > 1 ? n / 2 : 1 )))
# make 3.81 (macOS) has no --output-sync: there the two outputs interleave
OUTPUT_SYNC := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)

test: lint
	@echo "test: the unit tests and the notebooks run side by side; each prints when it ends"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(HALF_THREADS)} \
		exec $(MAKE) --no-print-directory -j2 $(OUTPUT_SYNC) all-checks

all-checks: unit notebooks strict-book browser-check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# The wheel, built from a copy of the sources (no build/ or egg-info left in the repository).
wheel: $(STAMP)
	rm -rf $(WHEELDIR) && mkdir -p $(WHEELDIR)/src
	cp pyproject.toml README.md $(WHEELDIR)/src/
	# without __pycache__, where the unit tests (running beside) may be writing .pyc files
	tar --exclude=__pycache__ -cf - sagan_tutorial | tar -xf - -C $(WHEELDIR)/src
	# offline with the environment's setuptools (Python 3.11's venv has one), else isolated
	isolation=$$($(BIN)/python -c "import setuptools" 2>/dev/null && echo --no-build-isolation); \
	$(BIN)/python -m pip wheel --quiet --no-deps $$isolation -w $(WHEELDIR) $(WHEELDIR)/src

# A fresh environment with what the wheel declares (extras book and test), at the pinned versions;
# made again when the requirements change. The wheel itself is reinstalled at every run.
$(TESTENV)/.installed: requirements.txt pyproject.toml | wheel
	rm -rf $(TESTENV)
	$(PYTHON) -m venv $(TESTENV)
	$(TESTENV)/bin/python -m pip install --quiet --no-compile -c requirements.txt \
		"$$(ls $(WHEELDIR)/*.whl)[book,test]"
	touch $@

# nbval runs copies of the notebooks in $(QUICK), with the package from the wheel (the repository
# is not on the path: nbval_cache checks it), and stores each run in the strict build's cache.
notebooks: wheel $(TESTENV)/.installed
	$(TESTENV)/bin/python -m pip install --quiet --no-deps --force-reinstall --no-compile \
		$(WHEELDIR)/*.whl
	rm -rf $(QUICK) $(STRICT_CACHE) && mkdir -p $(QUICK)
	cp book/*.ipynb $(QUICK)/
	cp scripts/nbval_cache.py $(QUICK)/conftest.py
	printf '[pytest]\naddopts = -ra\n' > $(QUICK)/pytest.ini
	cd $(QUICK) && SAGAN_TUTORIAL_QUICK=1 exec $(CURDIR)/$(TESTENV)/bin/python -m pytest \
		--nbval-lax --nbval-current-env --rootdir . -c pytest.ini \
		--nbval-sanitize-with $(CURDIR)/tests/nbval_sanitize.cfg \
		--nbval-cache $(CURDIR)/$(STRICT_CACHE) *.ipynb

# Warnings are errors; built apart from _build/html from the outputs of the nbval run (a notebook
# missing from the cache would run again here, in quick mode: that fails the target).
strict-book: notebooks
	mkdir -p $(STRICT)
	SAGAN_TUTORIAL_QUICK=1 $(BIN)/jupyter-book build -W --keep-going --all --path-output $(STRICT) . \
		> $(STRICT)/build.log 2>&1 || { cat $(STRICT)/build.log; exit 1; }
	@grep -c "Using cached notebook" $(STRICT)/build.log | sed 's/^/strict-book: notebooks from the nbval run: /'
	@if grep "Executing notebook" $(STRICT)/build.log; then \
		echo "strict-book: the notebooks above ran again (their code changed since make notebooks?)"; \
		exit 1; fi

# Every page of the strict build in headless Chromium, offline, at 1280 px and 390 px wide.
browser-check: strict-book
	$(BIN)/python scripts/browser_check.py $(STRICT)/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

clean:
	rm -rf _build .pytest_cache .ruff_cache
