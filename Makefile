# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/newsmon demo

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The web page's end-to-end tests drive Debian's chromium (Playwright's own browser downloads are not used).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/distributed.py
	$(BIN)/python bench/es_sink.py
	$(BIN)/python bench/alerts.py

clean:
	rm -rf $(VENV) data .pytest_cache
