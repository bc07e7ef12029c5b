#!/usr/bin/env bash
# cluster_text.sh - text through a real loopback cluster (tests/cluster/text_cluster.py): chat
# messages and prompt text in, streamed text out, checked against Detokenize and the
# @huggingface/tokenizers + @huggingface/jinja references; stop strings across token
# boundaries; bad input; `mx client --prompt`; a model without a tokenizer.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
out=$(timeout 300 /usr/bin/python3 tests/cluster/text_cluster.py ../shared/golden/tiny 2>&1)
rc=$?
echo "$out"
last=$(echo "$out" | tail -1)
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' <<<"$last"; then
    echo "0 passed, 1 failed"
    exit 1
fi
[ $rc -eq 0 ]
