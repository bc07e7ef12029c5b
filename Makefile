# Makefile - builds libmx (core/), the mx CLI, the services, tests and benchmarks.
# `make` builds everything, `make test` runs the whole test suite, `make asan` the same under
# AddressSanitizer + UBSan, `make bench` the benchmarks. Areas add their own sources and
# binaries through a module.mk next to them (included below), so this file stays short.
#
# Options (command line or environment):
#   BUILD=dir     output directory (default build)
#   V=1           print full command lines (default: one short line per file)
#   CUDA=1        compile the CUDA backend (core/cuda, needs nvcc); default 0 links a stub that
#                 refuses backend "cuda"; CUDA=auto builds it when $(CUDA_HOME)/bin/nvcc exists
#   WERROR=1      warnings are errors (CI sets it)
#   SAN=1         AddressSanitizer + UBSan (`make asan` sets it)
#   OPT=-O2       optimisation flags
#   CFLAGS, CPPFLAGS, LDFLAGS, LDLIBS   yours: appended after the project's own flags
#   PREFIX=/usr/local, DESTDIR=         for `make install`
# Other targets: install, compdb (compile_commands.json), bins, tests-build, gpu-bins, fuzz-bins
# (the libFuzzer targets `make fuzz` runs).

BUILD ?= build
SAN ?=
CC ?= cc
OPT ?= -O2
V ?= 0
CUDA ?= 0
WERROR ?= 0
PREFIX ?= /usr/local

# --- dependencies ----------------------------------------------------------------------------
# A missing package stops the build with its name (pkg-config's own message), never an empty
# flag list that fails later with a confusing compiler error.
PKGS := jansson libconfig libpcre2-8 libutf8proc grpc libprotobuf-c libmicrohttpd libcares
ifeq ($(filter-out clean,$(or $(MAKECMDGOALS),all)),)
else
PKG_ERRORS := $(shell pkg-config --print-errors --exists $(PKGS) 2>&1)
ifneq ($(PKG_ERRORS),)
$(error pkg-config: $(PKG_ERRORS) -- install the packages (deploy/install-deps.sh) or set PKG_CONFIG_PATH)
endif
endif
# grpc's .pc lists every abseil library once per dependent (~1.7 KB of link flags, 85 words);
# the link order matters, so each flag is kept at its LAST occurrence.
reverse = $(if $1,$(call reverse,$(wordlist 2,$(words $1),$1)) $(firstword $1))
uniq_first = $(if $1,$(firstword $1) $(call uniq_first,$(filter-out $(firstword $1),$1)))
dedupe_last = $(strip $(call reverse,$(call uniq_first,$(call reverse,$1))))
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(call dedupe_last,$(shell pkg-config --libs $(PKGS)))
# OpenBLAS is a benchmark reference only (bench_gemm); nothing else links it.
BLAS_LIBS = $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

# --- flags -----------------------------------------------------------------------------------
# MX_* are the project's own; the user's CFLAGS/LDFLAGS/LDLIBS are appended, so they can add
# or override (e.g. `make CFLAGS=-O0`) without losing include paths.
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla
ifeq ($(WERROR),1)
WARN += -Werror
endif
MX_CFLAGS := -std=c11 $(OPT) -g $(WARN) -D_GNU_SOURCE -pthread -fno-strict-aliasing \
             -I. -I$(BUILD)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS)
MX_LDFLAGS :=
MX_LDLIBS := $(PKG_LIBS) -lm -lpthread
ifeq ($(SAN),1)
MX_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
MX_LDFLAGS += -fsanitize=address,undefined
endif

# Files named *_avx512.c / *_avx2.c / *_amx.c hold SIMD kernels; they are only called after a
# run-time CPU check (core/cpu/cpu_features.h), so only they get ISA flags, and the flags name
# what that check tests: AVX-512 F/BW/VL/DQ (no BF16: the AVX-512 check does not test it),
# AMX-TILE + AMX-BF16 for mx_cpu_amx_usable() (AVX512-BF16 comes with every AMX-BF16 CPU).
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
AMX_FLAGS := $(AVX512_FLAGS) -mavx512bf16 -mamx-tile -mamx-bf16
AVX2_FLAGS := -mavx2 -mfma -mf16c
isa_flags = $(if $(filter %_amx.c,$1),$(AMX_FLAGS),$(if $(filter %_avx512.c,$1),$(AVX512_FLAGS),$(if $(filter %_avx2.c,$1),$(AVX2_FLAGS))))
# The full compiler flags of one C file: the object rule and `make compdb` both use this.
cflags_for = $(MX_CFLAGS) $(call isa_flags,$1) $(CPPFLAGS) $(CFLAGS)

# Quiet rules: `  CC core/model.o` unless V=1.
ifeq ($(V),1)
say =
else
say = @printf '  %-4s %s\n' '$1' '$(patsubst $(BUILD)/%,%,$2)';
endif
# Compile one object / link a program from the prerequisites' objects and archives.
COMPILE = $(call say,CC,$@)$(CC) $(call cflags_for,$<) -MMD -MP -c $< -o $@
LINK = $(call say,LD,$@)$(CC) $(MX_LDFLAGS) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) $(MX_LDLIBS) $(LDLIBS)
# A test or benchmark compiled and linked in one step: $< plus the archives among $^.
CCLD = $(call say,CCLD,$@)$(CC) $(call cflags_for,$<) -MMD -MP $(MX_LDFLAGS) $(LDFLAGS) -o $@ $< \
       $(filter %.a,$^) $(MX_LDLIBS) $(LDLIBS)
ARCHIVE = $(call say,AR,$@)rm -f $@ && ar rcs $@ $^

# --- version ---------------------------------------------------------------------------------
# `git describe` when the tree has a tag, else the VERSION file; baked into $(BUILD)/gen/
# mx_version.h, rewritten only when it changes so a rebuild touches only its users.
MX_VERSION := $(shell git describe --tags --dirty 2>/dev/null || cat VERSION)

CORE_SRC := $(wildcard core/*.c core/cpu/*.c core/tokenizer/*.c core/rpc/*.c)
CORE_OBJS = $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRC))
GEN_SRC :=
BINS :=
TEST_BINS = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
BENCH_BINS = $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/bench_*.c))
LIB := $(BUILD)/libmx.a

.PHONY: all bins tests-build test asan bench clean gpu-test demo fuzz install compdb FORCE
all: $(BUILD)/bin/mx bins tests-build

# Area fragments: proto/, core/cuda/, router/, services ... (each appends to CORE_OBJS, BINS,
# MX_LDLIBS, or builds its own lib<area>.a).
include $(sort $(wildcard */module.mk core/*/module.mk))

# What the build was configured with; libmx.a is re-archived when it changes (CUDA=1 then
# CUDA=0 in one BUILD dir must not keep the CUDA objects).
BUILD_CONFIG := CUDA=$(CUDA) SAN=$(SAN)
$(shell mkdir -p $(BUILD)/gen; echo '$(BUILD_CONFIG)' | cmp -s - $(BUILD)/config.stamp || \
        echo '$(BUILD_CONFIG)' >$(BUILD)/config.stamp)
$(shell echo '#define MX_VERSION "$(MX_VERSION)"' | cmp -s - $(BUILD)/gen/mx_version.h || \
        echo '#define MX_VERSION "$(MX_VERSION)"' >$(BUILD)/gen/mx_version.h)

# libmx.a's member list, rewritten only when it changes: a source added, removed or moved to
# another library re-archives libmx.a, so it never keeps an object whose source is gone.
$(shell echo '$(sort $(CORE_OBJS))' | cmp -s - $(BUILD)/libmx.members || \
        echo '$(sort $(CORE_OBJS))' >$(BUILD)/libmx.members)

$(LIB): $(CORE_OBJS) $(BUILD)/config.stamp $(BUILD)/libmx.members
	@mkdir -p $(dir $@)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(COMPILE)

$(BUILD)/bin/mx: $(patsubst %.c,$(BUILD)/%.o,$(wildcard cli/*.c)) $(LIB)
	@mkdir -p $(dir $@)
	$(LINK)

bins: $(BINS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) -lcmocka

tests-build: $(TEST_BINS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD)

$(BUILD)/bench/bench_gemm: bench/bench_gemm.c $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) $(BLAS_LIBS)

# The whole suite: unit tests of every module, golden fixtures, cluster and client tests.
test: all
	BUILD=$(BUILD) ./tests/run.sh

asan:
	$(MAKE) BUILD=build/asan SAN=1 OPT=-O1 test

bench: all $(BENCH_BINS)
	BUILD=$(BUILD) ./bench/run.sh

# --- fuzzing ---------------------------------------------------------------------------------
# libFuzzer targets (checkpoint loader, config, tokenizer), FUZZ_SECONDS each: tests/fuzz/run.sh
# builds them through fuzz-bins and runs them. They are compiled by clang with the project's own
# flags (one include root, the same warnings) plus the fuzzer, ASan and UBSan, from the few core
# sources each needs, into $(BUILD)/fuzz/ (apart from the normal objects: other flags).
FUZZ_SECONDS ?= 30
FUZZ_CC ?= clang
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS = $(MX_CFLAGS) -O1 $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(CPPFLAGS) $(CFLAGS)
FUZZ_LDLIBS = $(shell pkg-config --libs jansson libpcre2-8 libutf8proc) -lm -lpthread
FUZZ_DIR := $(BUILD)/fuzz
fuzz_objs = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$1)
FUZZ_TOK_SRC := core/error.c $(wildcard core/tokenizer/*.c)
FUZZ_BINS := $(addprefix $(FUZZ_DIR)/,fuzz_safetensors fuzz_config fuzz_load fuzz_encode write_small_tokenizer)

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call say,CC,$@)$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@
FUZZ_LINK = $(call say,LD,$@)$(FUZZ_CC) $(FUZZ_SAN) $1 $(LDFLAGS) -o $@ $^ $(FUZZ_LDLIBS) $(LDLIBS)

$(FUZZ_DIR)/fuzz_safetensors: $(call fuzz_objs,tests/fuzz/fuzz_safetensors.c core/safetensors.c core/tensor.c core/error.c)
	$(call FUZZ_LINK,-fsanitize=fuzzer)
$(FUZZ_DIR)/fuzz_config: $(call fuzz_objs,tests/fuzz/fuzz_config.c core/config.c core/error.c)
	$(call FUZZ_LINK,-fsanitize=fuzzer)
$(FUZZ_DIR)/fuzz_%: $(call fuzz_objs,tests/tokenizer/fuzz_%.c $(FUZZ_TOK_SRC))
	$(call FUZZ_LINK,-fsanitize=fuzzer)
.SECONDARY: $(call fuzz_objs,$(wildcard tests/tokenizer/fuzz_*.c)) # made through the pattern: kept
# the tokenizer fuzzers' seed: a small real tokenizer.json (a plain program, no fuzzer main)
$(FUZZ_DIR)/write_small_tokenizer: $(call fuzz_objs,tests/fuzz/write_small_tokenizer.c $(FUZZ_TOK_SRC))
	$(call FUZZ_LINK,)

.PHONY: fuzz-bins
fuzz-bins: $(FUZZ_BINS)

fuzz:
	BUILD=$(BUILD) ./tests/fuzz/run.sh $(FUZZ_SECONDS)

# The README's main job: a loopback cluster serving a small model, answering gRPC calls.
demo: all
	BUILD=$(BUILD) ./deploy/demo.sh

# The GPU checks build the CUDA backend (tests/gpu/run.sh runs make, which reads CUDA from the
# environment).
gpu-test:
	CUDA=1 BUILD=$(BUILD) ./tests/gpu/run.sh

# --- install ---------------------------------------------------------------------------------
# Headers keep the source layout under include/mx (`#include "core/model.h"`, as inside the
# tree, with -I$(PREFIX)/include/mx from mx.pc); *_internal.h headers are not installed. Only
# libmx (core/) is installed: the router and the services are programs' internals.
INSTALL_BINS := mx gateway attention-svc expert-svc
INSTALL_HEADERS = $(filter-out %_internal.h core/tokenizer/tok_%.h,$(wildcard core/*.h core/*/*.h))
DESTDIR ?=
idir = $(DESTDIR)$(PREFIX)
$(BUILD)/mx.pc: mx.pc.in $(BUILD)/config.stamp FORCE
	@sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(MX_VERSION)|' -e 's|@REQUIRES@|$(PKGS)|' \
	    -e 's|@LIBS@|$(if $(filter 1,$(CUDA)),$(CUDA_LDLIBS)) -lm -lpthread|' $< >$@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

install: $(BUILD)/bin/mx bins $(LIB) $(BUILD)/mx.pc
	$(call say,INST,$(idir))install -d $(idir)/bin $(idir)/lib/pkgconfig $(idir)/include/mx
	@install -m 755 $(addprefix $(BUILD)/bin/,$(INSTALL_BINS)) $(idir)/bin/
	@install -m 644 $(LIB) $(idir)/lib/
	@install -m 644 $(BUILD)/mx.pc $(idir)/lib/pkgconfig/
	@for h in $(INSTALL_HEADERS); do install -D -m 644 $$h $(idir)/include/mx/$$h || exit 1; done
	@cd $(BUILD)/gen && for h in $(patsubst $(BUILD)/gen/%,%,$(MX_PROTO_H)); do \
	    install -D -m 644 $$h $(idir)/include/mx/$$h || exit 1; done

# --- compile_commands.json -------------------------------------------------------------------
# Written from cflags_for, the same function the object rule uses, so editors see exactly the
# flags the build uses (no extra tool).
COMPDB_SRC = $(CORE_SRC) $(wildcard router/*.c cli/*.c gateway/*.c attention-svc/*.c expert-svc/*.c \
               tests/unit/*.c tests/rpc/*.c tests/tokenizer/*.c tests/gpu/*.c bench/*.c)
compdb_entry = {"directory": "$(CURDIR)", "file": "$1", "command": "$(CC) $(strip $(call cflags_for,$1)) -c $1"}
compdb: | $(MX_PROTO_H)
	$(file >compile_commands.json,[)
	$(foreach f,$(COMPDB_SRC),$(file >>compile_commands.json,  $(call compdb_entry,$f)$(if $(filter-out $f,$(lastword $(COMPDB_SRC))),$(comma))))
	$(file >>compile_commands.json,])
	@echo "  GEN  compile_commands.json ($(words $(COMPDB_SRC)) files)"
comma := ,

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
