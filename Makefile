# Two commands do everything on a fresh machine with python3 and make:
#   make book   — install, run every notebook with papermill (PROFILE=smoke), build the book
#   make test   — install, run the test suite (it also runs the smoke book and opens it in
#                 headless Chromium, installed from Debian's packages when run as root)
#   make lint   — ruff (check and format) on the code, nbstripout on the source notebooks
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke

.PHONY: install browser book run build lint test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

install: $(VENV)/.installed

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found, the browser test will be skipped"; fi; }

run: install
	$(PY) -m clustr_lib run --profile $(PROFILE)

build: install
	$(PY) -m clustr_lib build

book: run build

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

test: install browser
	$(PY) -m pytest

clean:
	rm -rf _build book/chapters
