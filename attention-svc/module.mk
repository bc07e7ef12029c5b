# attention-svc/module.mk - the attention-svc binary (a pipeline stage). Its sources are not
# part of libmx: they link against it.
ATTN_SRC := $(wildcard attention-svc/*.c)
ATTN_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(ATTN_SRC))

$(BUILD)/bin/attention-svc: $(ATTN_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
BINS += $(BUILD)/bin/attention-svc

# Unit tests of the stage's pieces (tests/unit/test_stage_*.c) link its objects but main.o.
ATTN_LIB_OBJS := $(filter-out $(BUILD)/attention-svc/main.o,$(ATTN_OBJS))
$(BUILD)/tests/test_stage_%: tests/unit/test_stage_%.c $(ATTN_LIB_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(ATTN_LIB_OBJS) $(LIB) $(LDLIBS) -lcmocka
