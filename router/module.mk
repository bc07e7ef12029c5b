# router/module.mk - the router (group tokens by expert, one call per shard, weighted combine,
# replica choice and health probes) as its own library, librouter.a: its one user is
# attention-svc, so libmx.a (core) does not carry it. Linked by the attention-svc binary and
# the stage tests (attention-svc/module.mk), the router's own tests and bench_expert_rtt
# (below: they serve expert shards in-process, so they link libexpert-svc.a too). Other
# modules name the archive as $(BUILD)/librouter.a (they are included before this file).
ROUTER_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(wildcard router/*.c))
ROUTER_LIBA := $(BUILD)/librouter.a

$(ROUTER_LIBA): $(ROUTER_OBJS)
	@mkdir -p $(dir $@)
	$(ARCHIVE)

$(BUILD)/tests/test_router_%: tests/unit/test_router_%.c $(ROUTER_LIBA) $(BUILD)/libexpert-svc.a $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD) -lcmocka

$(BUILD)/bench/bench_expert_rtt: bench/bench_expert_rtt.c $(ROUTER_LIBA) $(BUILD)/libexpert-svc.a $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD)
