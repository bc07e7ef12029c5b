# core/tokenizer/module.mk - the tokenizer's test driver (tests/tokenizer/tok_tool.c), used by
# tests/suites/tokenizer_*.sh and bench/bench_tokenizer.sh; the library sources themselves are
# picked up by the top Makefile.
$(BUILD)/tests/tokenizer/tok_tool: tests/tokenizer/tok_tool.c $(LIB)
	@mkdir -p $(dir $@)
	$(CCLD)
BINS += $(BUILD)/tests/tokenizer/tok_tool
