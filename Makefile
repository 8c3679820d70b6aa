# edgeqa: `make run` runs the main job end to end, `make test` the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean

install: $(STAMP)

# torch goes first, from the CPU wheel on disk: letting pip resolve it through the project pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/edgeqa eval --model $(SHARED)/models/minilm-l6-h384-squad1 --data $(SHARED)/data/squad/dev-v1.1.json.gz \
		--batch-size 32 --out runs/teacher-dev

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs nc_workspace .pytest_cache
