# The course's task runner. The two commands of the README:
#   make course   run every notebook headless, write build/ and the report
#   make test     lint + unit tests + every notebook under nbval, with its exercise solutions
#                 appended (copies in build/nbval/: each notebook runs once, then its solutions)
# Both create .venv/ on their first run, at the versions of constraints.txt (torch first: the lock's
# version as pip resolves it, which is PyPI's CUDA build on Linux x86-64 unless TORCH_SPEC names a
# +cpu build: see README "GPU, or a torch you already have" and "Versions").

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package version the course is tested with, torch included (README "Versions"); setup
# installs through it, `make lock` rewrites it on purpose.
LOCK := constraints.txt
LOCKED_TORCH := $(shell grep -m1 '^torch==' $(LOCK))
# torch requirement installed before everything else (the lock's by default). TORCH_SPEC=none keeps
# the torch you have (with VENV_FLAGS=--system-site-packages; the lock's torch line is then left
# out), TORCH_SPEC=torch==VERSION+cu128 picks a build. The venv records both (.venv/.torch-spec,
# .venv/.venv-flags) and keeps them; asking a made venv for others fails (venv-spec).
TORCH_SPEC ?= $(or $(shell cat $(VENV)/.torch-spec 2>/dev/null),$(LOCKED_TORCH))
VENV_FLAGS ?= $(shell cat $(VENV)/.venv-flags 2>/dev/null)
STAMP := $(VENV)/.installed
PYTEST_NB := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# nbval runs copies of the notebooks with their <details> solutions appended as code cells
NBVAL_DIR := build/nbval

.PHONY: setup venv-spec lock course test quick lint unit nbval nbval-copies lab notebooks \
	exercises slides bundle bundle-check browser-check zoo data clean

# Re-runs when pyproject.toml or the lock changes: pip then moves every package to the lock.
$(STAMP): pyproject.toml $(LOCK) | venv-spec
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	echo '$(TORCH_SPEC)' > $(VENV)/.torch-spec && echo '$(VENV_FLAGS)' > $(VENV)/.venv-flags
	grep -v '^torch==' $(LOCK) > $(VENV)/constraints-own-torch.txt
	if [ "$(TORCH_SPEC)" != "none" ]; then $(BIN)/python -m pip install -q -c $(LOCK) "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -c $(if $(filter none,$(TORCH_SPEC)),$(VENV)/constraints-own-torch.txt,$(LOCK)) -e ".[test]"
	# JupyterLab for a room with no network: RISE's theme with local fonts, no news/update fetch
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp labkit/assets/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

# A venv's torch and its view of system packages are fixed when it is made: a different
# TORCH_SPEC or VENV_FLAGS for an existing .venv fails here instead of being ignored. (A venv
# made before the record existed counts as made with the defaults.)
venv-spec:
	@if [ -d $(VENV) ]; then \
	  had="TORCH_SPEC=$$(cat $(VENV)/.torch-spec 2>/dev/null || echo '$(LOCKED_TORCH)') VENV_FLAGS=$$(cat $(VENV)/.venv-flags 2>/dev/null)"; \
	  want="TORCH_SPEC=$(TORCH_SPEC) VENV_FLAGS=$(VENV_FLAGS)"; \
	  if [ "$$had" != "$$want" ]; then \
	    echo "error: $(VENV) was made with $$had, not $$want; remove it (rm -rf $(VENV)) and run make setup with what you want" >&2; \
	    exit 1; \
	  fi; \
	fi

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

# The fast inner loop: the unit tests without those marked slow (two-rank jobs, a venv install, two notebooks re-run);
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

# Re-resolve the lock on purpose: the newest versions pyproject.toml's ranges allow, in a throwaway
# venv (build/lock-venv), torch as LOCK_TORCH says; LOCK_HOLD="pkg==x.y ..." holds packages back.
# On Linux x86-64 name the CPU build (PyPI's default torch is CUDA's, and its nvidia-* packages
# would enter the lock: refused): LOCK_TORCH=torch==X.Y.Z+cpu PIP_EXTRA_INDEX_URL=<CPU index>.
# Then: git diff constraints.txt, make setup, make test, and commit the lock with what it changed.
LOCK_TORCH ?= $(LOCKED_TORCH)
LOCK_HOLD ?=
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q "$(LOCK_TORCH)"
	build/lock-venv/bin/python -m pip install -q -e ".[test]" $(LOCK_HOLD)
	( echo "# Every package version the course is tested with (README \"Versions\"). make setup and the"; \
	  echo "# bundle install through it (pip -c); make lock rewrites it (pip freeze, torch's build label cut)."; \
	  echo "# made on: $$(build/lock-venv/bin/python -c 'import platform as p; print("python", p.python_version(), p.system(), p.machine())')"; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)[+].*/\1/' \
	) > $(LOCK).new
	@if grep -qiE '^(nvidia-|triton==)' $(LOCK).new; then \
	  echo "error: the lock venv got a CUDA torch (nvidia-*/triton in pip freeze); on Linux run make lock LOCK_TORCH=torch==VERSION+cpu PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2; \
	  rm -f $(LOCK).new; rm -rf build/lock-venv; exit 1; \
	fi
	mv $(LOCK).new $(LOCK)
	rm -rf build/lock-venv

clean:
	rm -rf build .pytest_cache .ruff_cache
