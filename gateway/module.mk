# gateway/module.mk - the gateway: libgateway.a (everything but main.c: API handlers,
# validation, scheduler, micro-batches, KV admission, text) and the gateway binary (main.c).
# Unit tests tests/unit/test_gateway_*.c link libgateway.a.
GW_LIB_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(filter-out gateway/main.c,$(wildcard gateway/*.c)))
GW_LIBA := $(BUILD)/libgateway.a

$(GW_LIBA): $(GW_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(ARCHIVE)

$(BUILD)/bin/gateway: $(BUILD)/gateway/main.o $(GW_LIBA) $(LIB)
	@mkdir -p $(dir $@)
	$(LINK)
BINS += $(BUILD)/bin/gateway

$(BUILD)/tests/test_gateway_%: tests/unit/test_gateway_%.c $(GW_LIBA) $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) -lcmocka
