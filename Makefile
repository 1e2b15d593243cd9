# The two set-up commands of README.md. Both create .venv and install the project first.
#   make demo   run the whole pipeline on the embedded demo competition (offline)
#   make test   lint and run the test suite (installs headless Chromium with apt-get if missing)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install browser

# pip byte-compiles the installed files on one core (105 s of a 199 s install here); compileall
# does it on every core (58 s). Like pip it skips files this Python cannot compile (torch ships
# Python 3.12-only test helpers), hence `|| true`. The .pyc files are needed: where
# PYTHONDONTWRITEBYTECODE is set, as on this machine, every process would compile torch again.
# --no-cache-dir: pip would also keep a copy of every wheel it downloads (torch's CUDA build and its
# libraries: several GB), which a machine with little free disk cannot hold beside the venv.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --quiet --no-cache-dir --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

install: $(VENV)/.installed

demo: install
	PIPELINE_WARM=1 dvc repro  # stages fork from one process that imported torch (pipeline/warm.py)
	python -m pipeline summary
	dvc plots show

# headless Chromium for the test that opens the plots page (skipped, with the reason, without it)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	  ($(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) || \
	  echo "no Chromium (apt-get failed): the browser test will be skipped"

test: install browser
	ruff check .
	ruff format --check .
	pytest
