# The README's two commands: `make book` and `make test`.
# Each creates .venv and installs the pinned environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ELR    := $(VENV)/bin/elr
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= quick
# training processes per sweep inside a chapter (one torch thread each); 1 = one process with all threads,
# which repeats bit for bit (2 is faster on 2 cores; see the reproducibility page)
ELR_WORKERS ?= 1

.PHONY: install book test prove bench clean

install: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 come from this machine's local wheel
# cache through pip's own configuration; everything else from PyPI.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

book: $(STAMP)
	ELR_WORKERS=$(ELR_WORKERS) $(ELR) book --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

prove: $(STAMP)
	$(ELR) prove

bench: $(STAMP)
	$(PY) benchmarks/bench.py

clean:
	rm -rf _build book/chapters
