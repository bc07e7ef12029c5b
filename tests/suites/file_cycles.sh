#!/usr/bin/env bash
# file_cycles.sh - "no two files call each other": builds the file-level call graph of every
# library (libmx.a, librouter.a and each service's lib<service>.a) from the objects' symbol
# tables (`nm`: file A -> file B when A uses a symbol B defines) and fails for every cycle (a
# strongly connected group of two or more files), naming its files; the CPU backend and, in a
# CUDA=1 build, the CUDA backend (op tables and their kernels) included. Also checks that
# libmx.a holds no router object, and that no file outside router/, attention-svc/, the
# router's and stages' tests and bench/ includes a router/ header. Run from the repo root with
# $BUILD set.
. "$(dirname "$0")/lib.sh"

libs=()
for l in libmx librouter libgateway libattention-svc libexpert-svc; do
    if [ -f "$BUILD/$l.a" ]; then libs+=("$BUILD/$l.a"); else bad "$BUILD/$l.a missing (run make)"; fi
done

if [ ${#libs[@]} -gt 0 ]; then
    # nm -A prints "archive:member: value type symbol"; members are named by their basename,
    # so the archive is kept in the node name.
    out=$(nm -A "${libs[@]}" 2>/dev/null | python3 -c '
import re, sys, collections
defs, uses = {}, collections.defaultdict(set)
for line in sys.stdin:
    m = re.match(r"^(.*?)\.a:(.*?\.o):\S*\s+(\S)\s+(\S+)$", line.strip())
    if not m:
        continue
    node = m.group(1).rsplit("/", 1)[-1] + ":" + m.group(2)
    typ, sym = m.group(3), m.group(4)
    uses.setdefault(node, set())
    if typ == "U":
        uses[node].add(sym)
    elif typ in "TDBRVWGSC":   # global definitions; static (lower-case) ones cannot be called
        defs.setdefault(sym, node)
graph = {n: sorted({defs[s] for s in syms if s in defs and defs[s] != n}) for n, syms in uses.items()}
# Tarjan: strongly connected components
index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in graph.get(v, []):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            comps.append(sorted(comp))
for v in sorted(graph):
    if v not in index:
        visit(v)
print("files %d" % len(graph))
for c in comps:
    print("cycle " + " ".join(c))
')
    nfiles=$(sed -n 's/^files //p' <<<"$out")
    if [ "${nfiles:-0}" -lt 20 ]; then
        bad "call graph: only ${nfiles:-0} object files found in ${libs[*]}"
    else
        ncycles=0
        while read -r _ files; do
            [ -n "$files" ] || continue
            bad "files call each other: $files"
            ncycles=$((ncycles + 1))
        done < <(grep '^cycle ' <<<"$out")
        [ $ncycles -eq 0 ] && ok "no call cycles among the $nfiles object files of ${#libs[@]} libraries"
    fi
fi

# libmx.a is core/ only: the router is its own library, which only attention-svc links.
if [ -f "$BUILD/libmx.a" ] && [ -f "$BUILD/librouter.a" ]; then
    router_objs=$(cd router && ls ./*.c | sed -E 's|^\./||; s/\.c$/.o/' | sort)
    in_mx=$(ar t "$BUILD/libmx.a" | sort | comm -12 - <(echo "$router_objs") | tr '\n' ' ')
    in_router=$(ar t "$BUILD/librouter.a" | sort)
    if [ -n "$in_mx" ]; then bad "libmx.a holds router objects: $in_mx"
    elif [ "$in_router" != "$router_objs" ]; then bad "librouter.a holds $(tr '\n' ' ' <<<"$in_router"), not router/*.c"
    else ok "libmx.a holds no router object; librouter.a holds router/*.c ($(wc -l <<<"$router_objs") files)"; fi
fi

# router/ headers are the router's and its one user's (attention-svc, and its tests) business.
# A helper header of tests/unit/ may include one when only those tests include it.
users=$(grep -rlE '#include "(\.\./)*router/' --include='*.c' --include='*.h' \
        core gateway expert-svc cli tests bench 2>/dev/null | grep -vE '^tests/unit/test_(router|stage)_' || true)
router_test_only() {
    local includers
    includers=$(grep -rlE "#include \"(tests/unit/)?${1#tests/unit/}\"" --include='*.c' --include='*.h' tests bench)
    [ -n "$includers" ] && ! grep -qvE '^tests/unit/test_(router|stage)_' <<<"$includers"
}
kept=
for u in $users; do
    case $u in
    tests/unit/*.h) router_test_only "$u" && continue ;;
    bench/*) continue ;;
    esac
    kept+="$u "
done
if [ -z "$kept" ]; then ok "no file outside router/, attention-svc/ and the router's tests includes a router/ header"
else bad "router/ headers included from: $kept"; fi

finish
