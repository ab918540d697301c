# pyswarm: the two commands of the README's quick start, and what they need.
# Both are safe to run twice.  Run as root on Debian (the lab makes network
# namespaces and runs one sshd and one dockerd per lab host).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYSWARM := $(VENV)/bin/pyswarm
PYTEST  := $(VENV)/bin/pytest
# Every command the code runs comes from one of these; deploy/lab_sys.py TOOLS says
# which package gives which command, and tests/deploy/test_tools.py checks both agree.
APT_PACKAGES := docker.io openssh-server openssh-client busybox-static iproute2 iptables ipset mount \
                python3-venv make procps psmisc docker-registry sudo
BENCH_APT_PACKAGES := dnsperf dnsmasq-base bind9-dnsutils wrk curl git

.PHONY: demo test deps bench-deps venv lab-down lint clean bench dist

## demo: a lab of 1 manager + 3 workers, the example stack, scaled, DNS shown
demo: deps venv
	bash deploy/demo.sh

## test: the whole suite (unit and end-to-end on the lab); fails when no test ran.
##       TEST_WORKERS=2 (the default): two pytest-xdist workers, each a pytest session
##       with a lab slot of its own, whole modules each (the ones that build from the
##       checkout's tree one after another, tests/conftest.py), longest first; then the
##       tests marked `serial` (timing bounds, the machine's kernel modules) in one
##       process, alone. A fresh clone on 2 cores: 10.2 min + 0.9 min (11.6 with the venv), against 18.9 min
##       with TEST_WORKERS=0: everything in one process, in pytest's order.
TEST_WORKERS ?= 2
TEST_ARGS    ?= --durations=25
test: deps venv
ifeq ($(TEST_WORKERS),0)
	bash deploy/run-tests.sh $(TEST_ARGS)
else
	@rc=0; \
	echo "make test: parallel phase, $(TEST_WORKERS) workers (not serial)"; \
	bash deploy/run-tests.sh -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" $(TEST_ARGS) || rc=$$?; \
	echo "make test: serial phase (the tests marked serial, alone)"; \
	bash deploy/run-tests.sh -m serial $(TEST_ARGS) || { [ $$rc -ne 0 ] || rc=1; }; \
	exit $$rc
endif

## bench: pyswarm against Docker Swarm on a lab of its own (root; all scenarios take ~30 min;
##        ONLY=deploy,scale,failure,failover,update,dns,footprint for some, ROUNDS=N, default 3)
bench: deps bench-deps venv $(VENV)/.bench-installed
	$(PY) bench/swarm_vs_pyswarm.py $(if $(ONLY),--only $(ONLY)) $(if $(ROUNDS),--rounds $(ROUNDS))

$(VENV)/.bench-installed: pyproject.toml
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

## dist: pyswarm's wheel and sdist in $(DIST)/ (default dist/), what `pip install` puts on a host
DIST ?= dist
dist: venv
	rm -f $(DIST)/pyswarm_orchestrator-*
	$(PY) -m build --outdir $(DIST) .

## deps: the system packages (apt) that the lab, the agent and the tests need
deps:
	@$(call apt_install,$(APT_PACKAGES))

## bench-deps: what the benchmarks run besides (dnsperf, dnsmasq, dig, wrk, curl, git)
bench-deps:
	@$(call apt_install,$(BENCH_APT_PACKAGES))

# install the Debian packages in $(1) that are not installed yet
define apt_install
missing=""; for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then \
  echo "installing:$$missing"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

## venv: pyswarm and its Python dependencies, in $(VENV)
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lab-down: venv
	$(PYSWARM) lab down

lint: venv
	bash deploy/typecheck.sh

clean: lab-down
	rm -rf $(VENV) *.egg-info
