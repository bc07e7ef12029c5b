# attention-svc/module.mk - a pipeline stage: libattention-svc.a (everything but main.c: the
# stage, its RPC handlers, the sequence table, the config) and the attention-svc binary.
# The stage dispatches its MoE through the router (librouter.a, router/module.mk). Unit tests
# tests/unit/test_stage_*.c link libattention-svc.a and librouter.a (and libexpert-svc.a, to
# serve expert shards in-process).
ATTN_LIB_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(filter-out attention-svc/main.c,$(wildcard attention-svc/*.c)))
ATTN_LIBA := $(BUILD)/libattention-svc.a

$(ATTN_LIBA): $(ATTN_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(ARCHIVE)

$(BUILD)/bin/attention-svc: $(BUILD)/attention-svc/main.o $(ATTN_LIBA) $(BUILD)/librouter.a $(LIB)
	@mkdir -p $(dir $@)
	$(LINK)
BINS += $(BUILD)/bin/attention-svc

$(BUILD)/tests/test_stage_%: tests/unit/test_stage_%.c $(ATTN_LIBA) $(BUILD)/librouter.a $(BUILD)/libexpert-svc.a \
                             $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) -lcmocka
