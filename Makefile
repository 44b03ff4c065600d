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

# The largest slice that works end to end today: a synthetic city, partitioned by Ray into 2x2 blocks,
# and real SfM (pycolmap) on a second synthetic capture, checked against its known poses.
demo: $(STAMP)
	$(BIN)/bigscene synth --preset small -w $(WS)/demo/city
	$(BIN)/bigscene partition -w $(WS)/demo/city partition.rows=2 partition.cols=2
	$(BIN)/bigscene synth --preset sfm -w $(WS)/demo/sfm-city
	$(BIN)/bigscene sfm $(WS)/demo/sfm-city/images -w $(WS)/demo/sfm

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(WS)
