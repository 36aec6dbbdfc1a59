# `make demo` and `make test` each create .venv when it is missing, install swinssl with its
# dev extra, then run. PYTHON picks the interpreter that builds the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(PY) -m swinssl.pretrain

test: install
	$(PY) -m pytest
