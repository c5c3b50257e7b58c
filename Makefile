# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real engines (deploy/engines/): jars, data and logs under ENGINES_DIR; ports to change when a
# second clone runs its own engines on this machine (it reuses healthy ones on the same ports).
ENGINES_DIR               ?= $(CURDIR)/.engines
KAFKA_PORT                ?= 9092
KAFKA_CONTROLLER_PORT     ?= 9093
OPENSEARCH_PORT           ?= 9200
OPENSEARCH_TRANSPORT_PORT ?= 9300
export ENGINES_DIR KAFKA_PORT KAFKA_CONTROLLER_PORT OPENSEARCH_PORT OPENSEARCH_TRANSPORT_PORT
ENGINES := $(BIN)/python deploy/engines/engines.py

.PHONY: demo test engines engines-stop browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/newsmon demo

# A Kafka broker and an OpenSearch node on 127.0.0.1 (fetched with Maven the first time), left running.
engines: $(STAMP)
	@$(ENGINES) start

engines-stop: $(STAMP)
	@$(ENGINES) stop

# The suite runs on the real engines: KAFKA_BOOTSTRAP and ES_URL if set (a cluster of your own), else
# the ones `make engines` starts (started here, or reused, and left running).
test: $(STAMP) browser
	@found="$$($(ENGINES) start --use-env)" && eval "$$found" && export KAFKA_BOOTSTRAP ES_URL && \
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
