# proto/module.mk - generates C code for the .proto contracts with protoc-c into $(BUILD)/gen
# and adds the generated objects to libmx.a; also builds the RPC test server used by the
# Python client tests. Generated files are build outputs: never commit them.

MX_PROTOS := $(sort $(wildcard proto/mx/v1/*.proto proto/mx/internal/v1/*.proto) \
                    proto/grpc/health/v1/health.proto proto/grpc/reflection/v1/reflection.proto)
MX_PROTO_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(MX_PROTOS))
MX_PROTO_H := $(MX_PROTO_C:.c=.h)
MX_PROTO_OBJS := $(MX_PROTO_C:.c=.o)

CORE_OBJS += $(MX_PROTO_OBJS)
GEN_SRC += $(MX_PROTO_C)

# protoc-c writes the .c and .h in one run; the .h depends on the .c so one rule covers both.
$(BUILD)/gen/%.pb-c.c: proto/%.proto
	@mkdir -p $(BUILD)/gen
	$(call say,GEN,$@)protoc-c -Iproto --c_out=$(BUILD)/gen $<
$(BUILD)/gen/%.pb-c.h: $(BUILD)/gen/%.pb-c.c ;
# Keep the generated sources (make would delete them as intermediate files).
.SECONDARY: $(MX_PROTO_C) $(MX_PROTO_H)

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c $(MX_PROTO_H)
	$(COMPILE)

# Server reflection (core/rpc/reflection.c) answers with the descriptors of every contract,
# compiled by protoc from the same files (with their comments, for `grpcurl describe`) and
# embedded in libmx as a byte array. v1alpha is wire-identical to v1: reflection.c uses v1's
# protoc-c code for both, so v1alpha is only in the descriptor set. The .pb-c.c name makes the
# object rule above compile it.
MX_DESCRIBED_PROTOS := $(MX_PROTOS) proto/grpc/reflection/v1alpha/reflection.proto
$(BUILD)/gen/mx_descriptor_set.pb: $(MX_DESCRIBED_PROTOS)
	@mkdir -p $(BUILD)/gen
	$(call say,GEN,$@)protoc -Iproto --include_imports --include_source_info --descriptor_set_out=$@ \
	    $(patsubst proto/%,%,$(MX_DESCRIBED_PROTOS))
$(BUILD)/gen/mx_descriptor_set.pb-c.c: $(BUILD)/gen/mx_descriptor_set.pb
	$(call say,GEN,$@){ echo '/* generated from $(notdir $<) by proto/module.mk: the FileDescriptorSet of every .proto */'; \
	  echo '#include <stddef.h>'; \
	  echo 'extern const unsigned char mx_rpc_descriptor_set[];'; \
	  echo 'extern const size_t mx_rpc_descriptor_set_len;'; \
	  echo 'const unsigned char mx_rpc_descriptor_set[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t mx_rpc_descriptor_set_len = sizeof mx_rpc_descriptor_set;'; } >$@.tmp
	@mv $@.tmp $@
CORE_OBJS += $(BUILD)/gen/mx_descriptor_set.pb-c.o
.SECONDARY: $(BUILD)/gen/mx_descriptor_set.pb $(BUILD)/gen/mx_descriptor_set.pb-c.c

# Anything that may include a generated header waits for generation (order-only, so a proto
# edit does not rebuild everything; the -MMD .d files track the real includes afterwards).
MX_PROTO_USERS := $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRC) $(wildcard cli/*.c gateway/*.c \
    attention-svc/*.c expert-svc/*.c router/*.c bench/*.c tests/rpc/*.c))
$(MX_PROTO_USERS): | $(MX_PROTO_H)
$(TEST_BINS) $(BENCH_BINS): | $(MX_PROTO_H)

# The RPC test server driven by tests/suites/rpc_python_client.sh.
$(BUILD)/tests/rpc/echo_server: $(BUILD)/tests/rpc/echo_server.o $(LIB)
	@mkdir -p $(dir $@)
	$(LINK)
BINS += $(BUILD)/tests/rpc/echo_server
