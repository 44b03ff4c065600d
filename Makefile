# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WS ?= ws

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The small synthetic city in 2x2 blocks, end to end at a CPU-sized budget (about 5 minutes on 2 cores).
demo: $(STAMP)
	$(BIN)/bigscene demo -w $(WS)/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(WS)
	find bigscene partitioning benchmarks tests -name __pycache__ -type d -prune -exec rm -rf {} +
