# One command to run the server on its embedded default, one to run the tests.
#   make run     set up .venv and start `twistd -n mpush` (in-memory stores)
#   make test    set up .venv and run the whole trial suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TESTS ?= tests
ARGS ?=

export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup run test clean

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

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
