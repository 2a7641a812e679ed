# splitserve: the two commands a newcomer runs are `make demo` and `make test`.
# Both create (or reuse) .venv with the pinned versions in requirements.lock.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast check venv data system-deps protos lock bench-rate-accuracy clean

demo: venv  ## Run the demo: held-out photos through split EfficientNet-Lite0, the real endpoint, the edge client.
	$(BIN)/splitserve demo

test: venv check data system-deps  ## Run the static checks, then the test suite.
	$(BIN)/python -m pytest -q

# mypy cannot follow package-dir (splitserve.core lives in core/), so it reads the parts through a tree of
# symlinks that mirrors the installed layout; settings in pyproject.toml [tool.mypy].
TYPED_PARTS := core edge cloud orchestrator
TYPECHECK := build/typecheck

check: venv  ## Static checks: ruff on the whole repo, mypy --strict on core, edge, cloud and orchestrator.
	$(BIN)/ruff check .
	@mkdir -p $(TYPECHECK)/splitserve
	@for part in $(TYPED_PARTS) protos; do ln -sfn ../../../$$part $(TYPECHECK)/splitserve/$$part; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml $(addprefix -p splitserve.,$(TYPED_PARTS))

# The fast tier (tests/conftest.py --fast): unit tests of core, edge, cloud and orchestrator on the committed
# tiny bundle (tests/fixtures/tiny_bundle), no training, torch unimportable from the interpreter's start.
test-fast: venv data  ## The fast tier: torch-free unit tests on a tiny committed bundle, under a minute.
	PYTHONPATH=tests/fixtures/no_torch $(BIN)/python -m pytest -q --fast

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PY) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' || \
	  { echo "splitserve needs Python 3.11 or 3.12 (found $$($(PY) --version)): run  make PY=python3.11 ..."; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]"
	@# Offline natural images (models.natural): only the wheels' data files are read, so no dependencies.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c requirements.lock foolbox scikit-image scikit-learn
	@touch $(STAMP)

data:  ## Fashion-MNIST from Debian's dataset-fashion-mnist (installed when running as root).
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST is not installed. Run:  sudo apt-get install -y dataset-fashion-mnist  then retry."; \
	    exit 1; \
	  fi; \
	fi

system-deps:  ## Prometheus and iproute2 for integration tests (installed when root; tests skip otherwise).
	@if [ "$$(id -u)" = 0 ] && { [ ! -x /usr/bin/prometheus ] || ! command -v tc >/dev/null; }; then \
	  echo "installing Debian packages prometheus iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus iproute2 >/dev/null; \
	fi

protos: venv  ## Regenerate protos/v1/*_pb2*.py from the .proto files.
	$(BIN)/python protos/gen_protos.py

lock: venv  ## Re-pin requirements.lock from the current environment.
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

bench-rate-accuracy: venv data
	$(BIN)/splitserve bench rate-accuracy

clean:
	rm -rf $(VENV) build *.egg-info
