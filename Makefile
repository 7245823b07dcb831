# Two entry points a newcomer needs: `make demo` and `make test`. Both set everything up first.
# `make docs` builds the documentation site into site/; `make dist` the sdist and wheel.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup test-tools demo docs dist image test lint bench bench-quick kube-apiserver \
	kube-apiserver-background clean demo-containers

# The virtual environment with FogVerse (editable) and its test/benchmark/docs extras. Kafka's
# jars are gathered from Maven Central into ~/.cache/fogverse on first use by the launcher.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,metrics,onnx,demo,view,docs]'
	touch $@

setup: $(VENV)/.installed
	$(BIN)/python -c "from fogverse.broker.launcher import resolve_jars; resolve_jars()"

# What only the tests need, from Debian's packages (installing them needs root): headless
# Chromium for the live view's browser tests (no browser download), etcd for the Kubernetes
# tests. `make demo` does without them.
test-tools:
	command -v chromium >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	command -v etcd >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server)

# The Kubernetes tests' API server: kube-apiserver built from the Go module proxy (Go >= 1.24),
# once per machine, cached under ~/.cache/fogverse (about 3.5 minutes on 2 idle cores).
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

# Strict: a warning (a broken link or anchor, a page left out of the nav, a docstring that
# cannot be read) is an error.
docs: setup
	$(BIN)/mkdocs build --strict --quiet --site-dir site

dist: setup
	rm -rf dist
	$(BIN)/python -m build --outdir dist
	$(BIN)/twine check --strict dist/*

# The node image (deploy/image/Containerfile) with podman: installs podman, runc and debootstrap
# from Debian if missing (as root), builds the base from Debian's packages (no registry is
# reached), then the image; each step is skipped when done (the tag is a hash of the content).
image: $(VENV)/.installed
	$(BIN)/python deploy/image/build.py

# The demo as containers (deploy/demo/compose.yaml): broker, camera, detector, sink and live
# view, each in its own container through podman's Docker-compatible API; builds the images
# first if needed (the broker's: the node image plus Debian's Java and Kafka's jars).
FRAMES ?= 300
demo-containers: $(VENV)/.installed
	$(BIN)/python deploy/demo/run.py --frames $(FRAMES)

# mypy checks fogverse/ (its settings are in pyproject.toml) with zero errors allowed.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The broker-fault scenarios (`fault` marker: own brokers or a 3-node cluster, mostly waiting
# out failovers) and the long-running `slow` ones (scale-out, master restart, the short soak:
# mostly waiting on timers) run in a second pytest process beside the rest, on brokers of
# their own, so the suite's wall time is the longer of the two rather than their sum. Both
# must pass. The documentation site is built (strictly) beside them too: it takes seconds of
# CPU and mostly waits. The sdist/wheel build, `twine check` and the installed wheel's run
# are a `slow` test (tests/test_wheel.py). The container images the slow engine tests use are
# built beside them from the start (a no-op when up to date; not niced: under a loaded machine
# a niced build could outlast the tests' wait for it). The tests that wait for the images or
# the API server run last in their process (tests/conftest.py), so every other test runs
# meanwhile; they build themselves if a build failed.
BESIDE := fault or slow
test: kube-apiserver-background setup test-tools lint
	@set -o pipefail; \
	$(BIN)/python deploy/image/build.py --broker >.image-build.log 2>&1 & image=$$!; \
	$(BIN)/mkdocs build --strict --quiet --site-dir site >.pytest-docs.log 2>&1 & \
	docs=$$!; \
	$(BIN)/pytest -q -m "$(BESIDE)" -p no:cacheprovider --durations=10 >.pytest-beside.log 2>&1 & \
	beside=$$!; \
	$(BIN)/pytest -q -m "not ($(BESIDE))" --durations=20 | tee .pytest-rest.log; rest=$$?; \
	wait $$beside; besides=$$?; \
	wait $$docs; site=$$?; wait $$image; \
	echo "== the documentation site (mkdocs build --strict): exit $$site"; cat .pytest-docs.log; \
	echo "== broker-fault and slow scenarios (run beside the rest): exit $$besides"; cat .pytest-beside.log; \
	echo "== the rest of the suite: exit $$rest"; tail -n 1 .pytest-rest.log; \
	exit $$(( rest != 0 || besides != 0 || site != 0 ))

bench: setup
	$(BIN)/python -m benchmarks

bench-quick: setup
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) dist build site .pytest_cache .ruff_cache
