# expert-svc/module.mk - the expert shard service: libexpert-svc.a (everything but main.c: the
# shard, its RPC handlers, the config) and the expert-svc binary. Tests and benchmarks that
# serve shards in-process (tests/unit/test_router_*.c, test_stage_*.c, bench_expert_rtt) link
# libexpert-svc.a; their rules are in router/module.mk and attention-svc/module.mk.
EXPERT_LIB_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(filter-out expert-svc/main.c,$(wildcard expert-svc/*.c)))
EXPERT_LIBA := $(BUILD)/libexpert-svc.a

$(EXPERT_LIBA): $(EXPERT_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(ARCHIVE)

$(BUILD)/bin/expert-svc: $(BUILD)/expert-svc/main.o $(EXPERT_LIBA) $(LIB)
	@mkdir -p $(dir $@)
	$(LINK)
BINS += $(BUILD)/bin/expert-svc
