# Two commands do everything on a fresh machine with python3 and make:
#   make book   — install, run every notebook with papermill (PROFILE=smoke), build the book
#   make test   — install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke

.PHONY: install book run build test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m clustr_lib run --profile $(PROFILE)

build: install
	$(PY) -m clustr_lib build

book: run build

test: install
	$(PY) -m pytest

clean:
	rm -rf _build book/chapters
