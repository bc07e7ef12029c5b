# gateway/module.mk - the gateway binary (public mx.v1.Generation API + scheduler). Its
# sources are not part of libmx: they link against it.
GW_SRC := $(wildcard gateway/*.c)
GW_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(GW_SRC))

$(BUILD)/bin/gateway: $(GW_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
BINS += $(BUILD)/bin/gateway
