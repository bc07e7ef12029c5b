#!/usr/bin/env bash
# elastic_dns.sh - an expert shard discovered through DNS (dnsmasq on a loopback port) and
# scaled 1 -> 3 -> 1 replicas under 16 streams: new replicas take their share of calls within
# 10 s, removed ones drain and exit 0, no request fails, fixture tokens
# (tests/cluster/elastic_dns.py).
case "${BUILD:-build}" in *asan*) export MX_ASAN=1 ;; esac
if [ ! -x /usr/sbin/dnsmasq ]; then
    echo "dnsmasq is not installed (apt-get install dnsmasq-base)"
    echo "0 passed, 1 failed"
    exit 1
fi
exec "$(dirname "$0")/../cluster/run_py.sh" elastic_dns ../shared/golden/tiny
