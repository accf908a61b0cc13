# Targets that people and CI share. `make up` starts the product; `make test` runs the tests.
PY ?= python3
export PYTHONPATH := $(CURDIR)

.PHONY: install images up down test test-fast lint bench

install:
	scripts/install.sh

images:
	scripts/build-images.sh

up:
	scripts/start.sh

down:
	scripts/stop.sh

# The whole suite against real Redis, Docker, nginx and a worker; a Docker skip is a failure.
test:
	LAUNCHER_REQUIRE_DOCKER=1 $(PY) -m pytest

# Unit and Redis tests only (no Docker).
test-fast:
	$(PY) -m pytest -m "not docker"

lint:
	$(PY) -m ruff check launcher workers ui tests celeryconfig.py bench notebooks/lib notebooks/build_templates.py
	$(PY) notebooks/build_templates.py --check

bench:
	$(PY) bench/launch_latency.py
