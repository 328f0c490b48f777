# Two commands on a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

# torchattacks is an independent oracle for tests only; its declared requirements would pull a CUDA
# torch and a broken torchvision, so it is installed without them.
$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps torchattacks==3.5.1
	touch $@

install: $(VENV)/.installed

# One torch thread here too: the quick start's small CNN gains nothing from more, and on a loaded 2-core machine
# the default pool made an epoch 30x slower (38.6 s instead of 1.3 s).
demo: $(VENV)/.installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/advtrain quickstart --out runs/quickstart

# One torch thread: with anything else on a 2-core machine the default pool is up to 25x slower.
test: $(VENV)/.test-installed
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q
	$(VENV)/bin/ruff check src tests

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) runs
