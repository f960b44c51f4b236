# Two commands do everything on a fresh machine with python3 and make:
#   make book   — install, run every notebook with papermill (PROFILE=smoke), build the book
#   make test   — install, run the test suite (it also runs the smoke book and opens it in
#                 headless Chromium, installed from Debian's packages when run as root)
#   make lint   — ruff (check and format) on the code, nbstripout on the source notebooks
# book and test also install Debian's dataset-fashion-mnist (30 MB, for fashion32) as root.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke
FASHION_MNIST_DEBIAN ?= /usr/share/datasets/fashion-mnist

.PHONY: install lock browser datasets mathjax book run build lint test clean

# The environment is installed from the lock (the exact versions behind the recorded results);
# `make install LOCK=` installs from pyproject.toml's ranges instead (other platforms/Pythons).
LOCK ?= requirements.lock
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	@if [ -z "$(LOCK)" ]; then $(PIP) -e ".[test,ray]"; \
	elif command -v uv >/dev/null 2>&1; then \
	  uv pip install --quiet --python $(PY) -r $(LOCK) && \
	  uv pip install --quiet --python $(PY) --no-deps -e .; \
	else $(PIP) -r $(LOCK) && $(PIP) --no-deps -e .; fi
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

install: $(VENV)/.installed

# Rewrite the lock from the environment in .venv (after an intended upgrade).
lock: install
	{ sed -n '/^#/p' requirements.lock; \
	  $(VENV)/bin/pip list --format=freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='; \
	} > requirements.lock.new
	mv requirements.lock.new requirements.lock

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found, the browser test will be skipped"; fi; }

# fashion32 reads $CLUSTR_DATA first, then this package's files, then torchvision's download:
# never fatal here.
datasets:
	@[ -d "$(FASHION_MNIST_DEBIAN)" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	    echo "note: could not install dataset-fashion-mnist; fashion32 will try torchvision's download"; \
	  else echo "note: dataset-fashion-mnist not installed (needs root and apt-get);" \
	    "fashion32 will read \$$CLUSTR_DATA or try torchvision's download"; fi; }

run: install datasets
	$(PY) -m clustr_lib run --profile $(PROFILE)

# MathJax 3 from npm, shipped with the built book (_config.yml: mathjax_path) so that its
# formulas are typeset without a network; fetched once into the ignored .cache/ and _mathjax/.
MATHJAX_VERSION ?= 3.2.2
MATHJAX_NPM := .cache/mathjax-npm/node_modules/mathjax
MATHJAX := _mathjax/mathjax/tex-chtml.js

$(MATHJAX):
	npm install --prefix .cache/mathjax-npm --no-save --no-audit --no-fund --loglevel=error \
	  mathjax@$(MATHJAX_VERSION)
	rm -rf _mathjax/mathjax && mkdir -p _mathjax/mathjax/output
	cp -r $(MATHJAX_NPM)/es5/tex-chtml.js $(MATHJAX_NPM)/es5/input $(MATHJAX_NPM)/es5/ui \
	  $(MATHJAX_NPM)/es5/a11y $(MATHJAX_NPM)/LICENSE _mathjax/mathjax/
	cp -r $(MATHJAX_NPM)/es5/output/chtml $(MATHJAX_NPM)/es5/output/chtml.js _mathjax/mathjax/output/

mathjax: $(MATHJAX)

build: install mathjax
	$(PY) -m clustr_lib build

book: run build

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

test: install browser datasets mathjax
	$(PY) -m pytest

clean:
	rm -rf _build book/chapters
