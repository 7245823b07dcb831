# Two entry points a newcomer needs: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench bench-quick clean

# The virtual environment with FogVerse (editable) and its test/benchmark extras. Kafka's
# jars are gathered from Maven Central into ~/.cache/fogverse on first use by the launcher.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,metrics,onnx,demo,view]'
	touch $@

# The live view's browser tests drive Debian's headless Chromium (no browser download).
setup: $(VENV)/.installed
	$(BIN)/python -c "from fogverse.broker.launcher import resolve_jars; resolve_jars()"
	command -v chromium >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# `make demo` runs the packaged face detector; `make demo MODEL=yolov8n.onnx` a YOLO model.
MODEL ?=
demo: setup
	$(BIN)/python examples/video_pipeline.py $(if $(MODEL),--model $(MODEL))

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python -m benchmarks

bench-quick: setup
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache
