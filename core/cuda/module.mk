# core/cuda/module.mk - builds the CUDA backend with `make CUDA=1` (CUDA=auto: when the CUDA
# toolkit is installed), else a stub whose mx_backend_cuda_create reports "built without CUDA",
# so a default build links no CUDA library even where nvcc exists. Kernels are compiled by nvcc
# with host warnings as errors and never with sanitizer flags (ASan builds link the same objects).

CUDA_HOME ?= /usr/local/cuda
NVCC := $(CUDA_HOME)/bin/nvcc
ifeq ($(CUDA),auto)
override CUDA := $(if $(wildcard $(NVCC)),1,0)
endif
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lnccl -lcudart -lstdc++

ifeq ($(CUDA),1)
ifeq ($(wildcard $(NVCC)),)
$(error CUDA=1 but $(NVCC) does not exist (set CUDA_HOME))
endif
CUDA_SRC := $(wildcard core/cuda/*.cu)
CORE_OBJS += $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
MX_LDLIBS += $(CUDA_LDLIBS)
MX_CFLAGS += -DMX_HAVE_CUDA -I$(CUDA_HOME)/include
NVCC_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCC_FLAGS := -std=c++17 -O3 -g $(NVCC_ARCH) -Werror all-warnings \
              -Xcompiler -Wall,-Wextra,-Werror,-fno-strict-aliasing -I. -I$(BUILD)/gen $(EXTRA_NVCC_FLAGS)

$(BUILD)/core/cuda/%.o: core/cuda/%.cu
	@mkdir -p $(dir $@)
	$(call say,NVCC,$@)$(NVCC) $(NVCC_FLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@
else
CORE_OBJS += $(BUILD)/core/cuda/backend_cuda_absent.o
endif

# GPU-only programs, built on demand by tests/gpu/run.sh (not part of `make all`, so a missing
# GPU or an unfinished CPU backend never breaks the default build).
GPU_TEST_BINS := $(BUILD)/tests/gpu/kernel_check $(BUILD)/tests/gpu/bench_cuda
.PHONY: gpu-bins
gpu-bins: $(GPU_TEST_BINS)

$(BUILD)/tests/gpu/%: tests/gpu/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) -lm
