# The two set-up commands of README.md. Both create .venv and install the project first.
#   make demo   run the whole pipeline on the embedded demo competition (offline)
#   make test   lint and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	dvc repro
	python -m pipeline summary

test: install
	ruff check .
	ruff format --check .
	pytest
