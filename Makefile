# Two entry points a newcomer needs: `make demo` and `make test`. Both set everything up first.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench bench-quick kube-apiserver kube-apiserver-background clean

# The virtual environment with FogVerse (editable) and its test/benchmark extras. Kafka's
# jars are gathered from Maven Central into ~/.cache/fogverse on first use by the launcher.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,metrics,onnx,demo,view]'
	touch $@

# The live view's browser tests drive Debian's headless Chromium (no browser download); the
# Kubernetes tests run Debian's etcd.
setup: $(VENV)/.installed
	$(BIN)/python -c "from fogverse.broker.launcher import resolve_jars; resolve_jars()"
	command -v chromium >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	command -v etcd >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server)

# The Kubernetes tests' API server: kube-apiserver built from the Go module proxy (Go >= 1.24),
# once per machine, cached under ~/.cache/fogverse (about 4 minutes on 2 idle cores).
kube-apiserver:
	deploy/kubernetes/apiserver/build.sh

# `make test` starts that build first, niced, beside everything else; the tests that need the
# server wait for it (a lock file) and it is a no-op once built.
kube-apiserver-background:
	@nohup nice -n 10 deploy/kubernetes/apiserver/build.sh >.kube-apiserver-build.log 2>&1 &

# `make demo` runs the packaged face detector; `make demo MODEL=yolov8n.onnx` a YOLO model.
MODEL ?=
demo: setup
	$(BIN)/python examples/video_pipeline.py $(if $(MODEL),--model $(MODEL))

# mypy checks fogverse/ (its settings are in pyproject.toml) with zero errors allowed.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The broker-fault scenarios (`fault` marker: own brokers or a 3-node cluster, mostly waiting
# out failovers) and the long-running `slow` ones (scale-out, master restart, the short soak:
# mostly waiting on timers) run in a second pytest process beside the rest, on brokers of
# their own, so the suite's wall time is the longer of the two rather than their sum. Both
# must pass.
BESIDE := fault or slow
test: kube-apiserver-background setup lint
	@set -o pipefail; \
	$(BIN)/pytest -q -m "$(BESIDE)" -p no:cacheprovider --durations=10 >.pytest-beside.log 2>&1 & \
	beside=$$!; \
	$(BIN)/pytest -q -m "not ($(BESIDE))" --durations=20 | tee .pytest-rest.log; rest=$$?; \
	wait $$beside; besides=$$?; \
	echo "== broker-fault and slow scenarios (run beside the rest): exit $$besides"; cat .pytest-beside.log; \
	echo "== the rest of the suite: exit $$rest"; tail -n 1 .pytest-rest.log; \
	exit $$(( rest != 0 || besides != 0 ))

bench: setup
	$(BIN)/python -m benchmarks

bench-quick: setup
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache
