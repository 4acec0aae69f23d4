# One command to run the server on its embedded default, one to run the tests.
#   make run     set up .venv and start `twistd -n mpush` (in-memory stores)
#   make test    set up .venv and run the whole trial suite
#   make rehearsal        (as root) the multi-host rehearsal (README "Scaling out"); options in ARGS
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TESTS ?= tests
ARGS ?=

export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup run test clean rehearsal

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= mpush --state-dir ./state $(ARGS)

test: $(STAMP)
	$(BIN)/trial $(TESTS)

rehearsal: $(STAMP)
	$(BIN)/python -m mpush.bench.rehearsal $(ARGS)

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
