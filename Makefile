# Everything runs from the project's own virtualenv (.venv), created on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit fast migrate bench clean image test-image deploy-dev

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the API, a worker and (without REDIS_URL) an embedded Redis on 127.0.0.1:8000; SQLite by default.
dev: $(STAMP)
	$(BIN)/ars dev

## Lint, type-check, then the whole suite against real Redis and MariaDB (or the fallbacks it prints).
test: lint unit

unit: $(STAMP)
	$(BIN)/pytest

## The pure logic alone, in this process (no services, no subprocess): under a second.
fast: $(STAMP)
	$(BIN)/pytest tests/unit

## Build the image and run it against MariaDB and Redis (podman, runc, debootstrap; see k8s/README.md).
test-image: $(STAMP)
	$(BIN)/pytest -m image -s

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

migrate: $(STAMP)
	$(BIN)/alembic upgrade head

bench: $(STAMP)
	$(BIN)/python -m bench

IMAGE ?= localhost/ansible-runner-service:dev
## Build the container image (podman) from a base made with debootstrap when no registry is reachable.
image:
	scripts/base-image.sh
	scripts/build-image.sh $(IMAGE)

## Build, push to DEV_REGISTRY, migrate, roll out the dev overlay (k8s/README.md). DRY_RUN=1 only prints.
DEV_REGISTRY ?= localhost:5000
KUBECTL ?= $(shell command -v kubectl || echo $(BIN)/kubectl)
deploy-dev:
	@DEV_REGISTRY="$(DEV_REGISTRY)" TAG="$(TAG)" DRY_RUN="$(DRY_RUN)" KUBECTL="$(KUBECTL)" scripts/deploy-dev.sh

clean:
	rm -rf $(VENV) var build .mypy_cache .ruff_cache .pytest_cache
