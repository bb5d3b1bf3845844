# The README's Quick start: `make demo` (install + the demo end to end), `make test` (install +
# the whole test suite, starting Redis on 127.0.0.1:6379 if nothing answers there).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "DTLR needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# Offline (no ImageNet download possible): make demo WEIGHTS=random, or WEIGHTS=/path/weights.pth
demo: install
	$(BIN)/dtlr submit --cohort demo $(if $(WEIGHTS),--weights $(WEIGHTS))

test: install
	@$(BIN)/python -c 'import redis; redis.Redis(socket_connect_timeout=1).ping()' 2>/dev/null \
		|| redis-server --daemonize yes --port 6379 --save ""
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
