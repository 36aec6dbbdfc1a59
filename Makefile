# `make demo` and `make test` each create .venv when it is missing, install swinssl with its
# dev extra, then run. PYTHON picks the interpreter that builds the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test figures install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The whole chain on the built-in data: pretrain (recipe=demo) on photos, fine-tune the newest demo run at a
# larger size and window (recipe=demo_ft), evaluate it; then inflate the same run to Video Swin and
# fine-tune it on generated panning clips (recipe=video_demo), evaluate it on 2 clips x 3 crops per video.
demo: install
	$(PY) -m swinssl.pretrain
	$(PY) -m swinssl.finetune
	$(PY) -m swinssl.evaluate checkpoint=runs/demo_ft 'data=$${swinssl_demo_shards:}' num_workers=2
	$(PY) -m swinssl.finetune recipe=video_demo
	$(PY) -m swinssl.evaluate checkpoint=runs/video_demo 'data=$${swinssl_demo_video_shards:}' num_workers=2 batch_size=4

test: install
	$(PY) -m pytest

# Redraw the figures the README shows: run the five notebooks top to bottom (outputs are not stored in them),
# each saving its figures under notebooks/figures/<notebook>/ (git keeps the PNGs only).
figures: install
	SWINSSL_NOTEBOOK_OUT=$(CURDIR)/notebooks/figures $(VENV)/bin/jupyter execute notebooks/0*.ipynb
