# attention-svc/module.mk - the attention-svc binary (a pipeline stage). Its sources are not
# part of libmx: they link against it.
ATTN_SRC := $(wildcard attention-svc/*.c)
ATTN_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(ATTN_SRC))

$(BUILD)/bin/attention-svc: $(ATTN_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
BINS += $(BUILD)/bin/attention-svc
