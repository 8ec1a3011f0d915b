# Two commands for a newcomer: `make demo` (the whole flow on a local broker and lake) and `make test`.
# Each does its own set-up: virtual environment, dependencies, broker.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMTOOL := .tools/promtool

.PHONY: demo test test-unit test-integration lint bench clean-demo promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m attendance demo

test: $(STAMP) $(PROMTOOL)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m attendance bench national --schools 2000

# promtool (Prometheus rule checks and rule unit tests) from Debian's prometheus package, extracted into
# .tools/ without installing anything. Best effort: without apt-get or the package (not Debian, offline,
# no package lists) nothing fails; tests/unit/deploy then skips the promtool tests and says why, and the
# Python schema checks of the rules still run.
promtool: $(PROMTOOL)

$(PROMTOOL):
	@mkdir -p $(dir $(PROMTOOL))
	@tmp=$$(mktemp -d) && chmod 777 "$$tmp" && \
	if (cd "$$tmp" && apt-get download -q prometheus >/dev/null 2>&1) \
	   && dpkg-deb -x "$$tmp"/prometheus_*.deb "$$tmp/x" && cp "$$tmp/x/usr/bin/promtool" $(PROMTOOL); then \
	  echo "fetched $$($(PROMTOOL) --version 2>&1 | head -n 1) into $(PROMTOOL)"; \
	else \
	  echo "promtool not fetched (needs apt-get and Debian's prometheus package): its tests will be skipped"; \
	fi; \
	rm -rf "$$tmp"
