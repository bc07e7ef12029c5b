# Makefile - builds libmx (core/ + router/), the mx CLI, the services, tests and benchmarks.
# `make` builds everything, `make test` runs the whole test suite, `make asan` the same under
# AddressSanitizer + UBSan, `make bench` the benchmarks. Areas add their own sources and
# binaries through a module.mk next to them (included below), so this file stays short.

BUILD ?= build
SAN ?=
CC ?= cc
OPT ?= -O2

PKGS := jansson libconfig libpcre2-8 libutf8proc grpc libprotobuf-c libmicrohttpd libcares
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
BLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

CFLAGS := -std=c11 $(OPT) -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -fno-strict-aliasing \
          -I. -Icore -I$(BUILD)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS := $(PKG_LIBS) $(BLAS_LIBS) -lm -lpthread
ifeq ($(SAN),1)
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# Files named *_avx512.c / *_avx2.c hold SIMD kernels; they are only called after a run-time
# CPU check, so only they get the ISA flags.
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c
AVX2_FLAGS := -mavx2 -mfma -mf16c

CORE_SRC := $(wildcard core/*.c core/cpu/*.c core/tokenizer/*.c core/rpc/*.c router/*.c)
CORE_OBJS = $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRC))
GEN_SRC :=
BINS :=
TEST_BINS = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
BENCH_BINS = $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/bench_*.c))
LIB := $(BUILD)/libmx.a

.PHONY: all test asan bench clean gpu-test demo fuzz
all: $(BUILD)/bin/mx bins tests-build

# Area fragments: proto/, core/cuda/, services ... (each appends to CORE_OBJS, BINS, LDLIBS).
include $(sort $(wildcard */module.mk core/*/module.mk))

$(LIB): $(CORE_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@

# *_amx.c: AMX tile kernels (run only after mx_cpu_amx_usable()), with the AVX-512 flags too.
$(BUILD)/%_amx.o: %_amx.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -mamx-tile -mamx-bf16 -mamx-int8 -MMD -MP -c $< -o $@

$(BUILD)/bin/mx: $(patsubst %.c,$(BUILD)/%.o,$(wildcard cli/*.c)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bins: $(BINS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcmocka

tests-build: $(TEST_BINS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The whole suite: unit tests of every module, golden fixtures, cluster and client tests.
test: all
	BUILD=$(BUILD) ./tests/run.sh

asan:
	$(MAKE) BUILD=build/asan SAN=1 OPT=-O1 test

bench: all $(BENCH_BINS)
	BUILD=$(BUILD) ./bench/run.sh

# libFuzzer targets (checkpoint loader, config, tokenizer), FUZZ_SECONDS each.
FUZZ_SECONDS ?= 30
fuzz:
	./tests/fuzz/run.sh $(FUZZ_SECONDS)

# The README's main job: a loopback cluster serving a small model, answering gRPC calls.
demo: all
	BUILD=$(BUILD) ./deploy/demo.sh

gpu-test:
	./tests/gpu/run.sh

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
