# Two commands do everything on a fresh Debian machine (see README):
#   make sweep   set up, then run the default local sweep on this CPU (plan, train, collect, fit, report)
#   make test    set up, then run the whole test suite (starts its own Slurm dev cluster, Open MPI, DeepSpeed)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scaleladder-installed
APT_PACKAGES := openmpi-bin libopenmpi-dev slurmd slurmctld slurm-client munge shellcheck util-linux g++
# The CPU build of torch: an unpinned torch would pull a multi-gigabyte CUDA build onto a CPU-only machine.
TORCH_CPU := torch==2.13.0

.PHONY: setup sweep test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing: $$missing"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "missing system packages (install them as root): $$missing"; fi; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null || command -v rocm-smi >/dev/null; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q $(TORCH_CPU); fi; fi
	$(PY) -m pip install -q -e '.[test]'
	@# DeepSpeed JIT-builds its shared-memory comm op at init_distributed even on gloo: build it once here.
	TORCH_EXTENSIONS_DIR=$$($(PY) -c 'from launcher.run.runtime import extensions_dir; print(extensions_dir())') \
	  $(PY) -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || \
	  echo "note: DeepSpeed's shm op did not pre-build; it will build on first use"
	touch $(STAMP)

sweep: setup
	$(VENV)/bin/ladder sweep

test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) sweeps runs .pytest_cache
