# The course's task runner. The two commands of the README:
#   make course   run every notebook headless, write build/ and the report
#   make test     lint + unit tests + every notebook under nbval, with its exercise solutions
#                 appended (copies in build/nbval/: each notebook runs once, then its solutions)
# Both create .venv/ on their first run (torch first, CPU build: see README "GPU or existing torch").

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch requirement installed before everything else; TORCH_SPEC=none keeps the torch you have
# (use with VENV_FLAGS=--system-site-packages), TORCH_SPEC=torch takes PyPI's default (CUDA) build.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
STAMP := $(VENV)/.installed
PYTEST_NB := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# nbval runs copies of the notebooks with their <details> solutions appended as code cells
NBVAL_DIR := build/nbval

.PHONY: setup course test quick lint unit nbval nbval-copies lab notebooks exercises slides live-slides \
	bundle bundle-check browser-check zoo data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	if [ "$(TORCH_SPEC)" != "none" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"
	# JupyterLab for a room with no network: RISE's theme with local fonts, no news/update fetch
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp labkit/assets/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

setup: $(STAMP)

course: $(STAMP)
	$(BIN)/python -m labkit course

test: lint nbval-copies
	$(BIN)/python -m pytest -q tests $(NBVAL_DIR) $(PYTEST_NB)

lint: $(STAMP)
	$(BIN)/ruff check labkit tests notebooks scripts benchmarks
	$(BIN)/ruff format --check labkit tests notebooks scripts benchmarks
	$(BIN)/lint-imports  # labkit's layers (pyproject.toml [tool.importlinter])

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The fast inner loop: the unit tests without those marked slow (two-rank jobs, a venv install);
# `make test` still runs everything.
quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

nbval-copies: $(STAMP)
	rm -rf $(NBVAL_DIR)
	$(BIN)/python -m labkit course --with-solutions $(NBVAL_DIR) $(NB)

# One notebook and its solutions: make nbval NB=notebooks/05_int8_quantization.ipynb
nbval: nbval-copies
	$(BIN)/python -m pytest -q $(NBVAL_DIR) $(PYTEST_NB)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# Re-execute notebooks top to bottom and store their outputs (volatile metadata stripped).
# One notebook: make notebooks NB=notebooks/05_int8_quantization.ipynb
notebooks: $(STAMP)
	$(BIN)/python -m labkit course --inplace $(NB)

# Run each notebook, then its exercise solutions in the same kernel (not part of make test:
# it re-runs every notebook). One notebook: make exercises NB=notebooks/11_lora.ipynb
exercises: $(STAMP)
	$(BIN)/python -m labkit course --exercises $(NB)

# Offline reveal.js decks (no CDN: reveal.js is vendored in labkit/assets) in build/slides/.
slides: $(STAMP)
	$(BIN)/python -m labkit slides $(NB)

# Offline bundle for a room with no network: build/bundle/{course.tar.gz,wheelhouse/,INSTALL.md}
# (downloads every wheel once); bundle-check installs it with no index and runs notebook 00.
bundle: $(STAMP)
	$(BIN)/python -m labkit bundle

bundle-check: $(STAMP)
	$(BIN)/python -m labkit bundle --check

# Chromium with no network: a deck screenshot and JupyterLab running notebook 00 (docs/*.png).
# Needs Debian's chromium (installed here if missing; root only).
browser-check: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium fonts-noto-color-emoji)
	$(BIN)/python -m labkit slides
	$(BIN)/python scripts/browser_check.py

zoo: $(STAMP)
	$(BIN)/python -m labkit build-zoo --force

data: $(STAMP)
	$(BIN)/python -m labkit build-data

clean:
	rm -rf build .pytest_cache .ruff_cache
