#!/usr/bin/env bash
# cluster_text.sh - text through a real loopback cluster (tests/cluster/text_cluster.py): chat
# messages and prompt text in, streamed text out, checked against Detokenize and the
# @huggingface/tokenizers + @huggingface/jinja references; stop strings across token
# boundaries; bad input; `mx client --prompt`; a model without a tokenizer.
exec "$(dirname "$0")/../cluster/run_py.sh" text_cluster ../shared/golden/tiny
