# `make run`: set up and start the daemon with its defaults. `make test`: set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test peers lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Editable (compat: the tree on sys.path, so Twisted finds twisted/plugins here): .venv/bin/twistd
	# runs the code in this tree.
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	# Write Twisted's plugin cache now, so twistd never warns it cannot.
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

# Options for the daemon: make run ARGS="--db /tmp/chat.sqlite3"
run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= chatserv $(ARGS)

test: $(STAMP) peers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Real peers the end-to-end tests drive: Debian's Chromium, irssi and tmux (installed when
# missing and we are root with apt). Node modules are installed by the tests themselves.
PEERS := chromium irssi tmux

peers:
	@missing=""; for peer in $(PEERS); do command -v $$peer >/dev/null 2>&1 || missing="$$missing $$peer"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing for the end-to-end tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Benchmarks (bench/run_all.py, under 5 minutes): chatserv beside twisted.words and ngIRCd on
# loopback; writes bench/RESULTS.md. Installs py-spy (for the profiles) into the venv; ngIRCd
# is Debian's ngircd package (not installed here: its package starts a daemon on 6667).
bench: $(STAMP)
	$(BIN)/pip install --quiet py-spy || echo "py-spy not installed: no profile"
	@command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || \
		echo "ngircd missing (apt-get install ngircd): the ngIRCd peer is skipped"
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
