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

# The whole chain on the built-in photos: pretrain (recipe=demo), fine-tune the newest demo run at a
# larger size and window (recipe=demo_ft), evaluate it.
demo: install
	$(PY) -m swinssl.pretrain
	$(PY) -m swinssl.finetune
	$(PY) -m swinssl.evaluate checkpoint=runs/demo_ft 'data=$${swinssl_demo_shards:}' num_workers=2

test: install
	$(PY) -m pytest
