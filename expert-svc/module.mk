# expert-svc/module.mk - the expert shard service. The shard (loading + RPC handlers) goes
# into libmx.a so tests can serve shards in-process; main.c makes the expert-svc binary.

EXPERT_SVC_LIB_SRC := $(filter-out expert-svc/main.c,$(wildcard expert-svc/*.c))
CORE_OBJS += $(patsubst %.c,$(BUILD)/%.o,$(EXPERT_SVC_LIB_SRC))

$(BUILD)/bin/expert-svc: $(BUILD)/expert-svc/main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

BINS += $(BUILD)/bin/expert-svc
