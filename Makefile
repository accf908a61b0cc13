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

# The whole suite against real Redis, Docker, nginx and a worker; a Docker skip is a failure. Then the line
# coverage of launcher/, workers/ and ui/, combined over the pytest process and every Python process the tests
# started ([tool.coverage] in pyproject.toml; data in var/coverage/). The exit status is pytest's.
# `make test PYTEST_ARGS=tests/test_store.py` runs and measures a part.
COVERAGE_DATA := $(CURDIR)/var/coverage/data
test:
	@rm -rf $(dir $(COVERAGE_DATA)) && mkdir -p $(dir $(COVERAGE_DATA))
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml COVERAGE_FILE=$(COVERAGE_DATA) \
		LAUNCHER_REQUIRE_DOCKER=1 $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	echo "coverage: $$(ls $(COVERAGE_DATA).* 2>/dev/null | wc -l) Python processes measured"; \
	COVERAGE_FILE=$(COVERAGE_DATA) $(PY) -m coverage combine --quiet && \
		COVERAGE_FILE=$(COVERAGE_DATA) $(PY) -m coverage report; \
	exit $$rc

# Unit and Redis tests only (no Docker).
test-fast:
	$(PY) -m pytest -m "not docker"

lint:
	$(PY) -m ruff check launcher workers ui tests celeryconfig.py bench notebooks/lib notebooks/build_templates.py
	$(PY) notebooks/build_templates.py --check
	$(PY) -m mypy

bench:
	$(PY) bench/launch_latency.py
