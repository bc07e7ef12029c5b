# gateway/module.mk - the gateway binary (public mx.v1.Generation API + scheduler). Its
# sources are not part of libmx: they link against it.
GW_SRC := $(wildcard gateway/*.c)
GW_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(GW_SRC))

$(BUILD)/bin/gateway: $(GW_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
BINS += $(BUILD)/bin/gateway

# Unit tests of the gateway's pieces (tests/unit/test_gateway_*.c) link its objects but main.o.
GW_LIB_OBJS := $(filter-out $(BUILD)/gateway/main.o,$(GW_OBJS))
$(BUILD)/tests/test_gateway_%: tests/unit/test_gateway_%.c $(GW_LIB_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(GW_LIB_OBJS) $(LIB) $(LDLIBS) -lcmocka
