#!/usr/bin/env bash
# build.sh - what a newcomer relies on in the build: a default (CPU) expert-svc links no CUDA
# or OpenBLAS library; quiet rules print one short line per file (V=1 the full command); a
# missing package fails with its name; `make install DESTDIR=...` installs the binaries, the
# headers and mx.pc, and a small C program compiles and links against the installed libmx
# through pkg-config alone; `mx --version` prints the VERSION file's (or git describe's)
# version. Builds into a scratch BUILD dir seeded with a copy of $BUILD's objects, so only the
# touched file is recompiled and the tree's build/ is never touched.
. "$(dirname "$0")/lib.sh"
need_bins mx gateway attention-svc expert-svc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# $BUILD's own configuration (CUDA=.. SAN=..), so the scratch build below matches its objects
read -r -a config <"$BUILD/config.stamp" || config=()
san=
grep -q 'SAN=1' "$BUILD/config.stamp" 2>/dev/null && san="-fsanitize=address,undefined"

# 1. a default build links neither CUDA nor OpenBLAS into the services
libs=$(ldd "$BUILD/bin/expert-svc" 2>&1)
if grep -qE 'libcudart|libcublas|libnccl|libopenblas' <<<"$libs"; then
    bad "expert-svc links: $(grep -E 'cuda|cublas|nccl|openblas' <<<"$libs" | tr '\n' ' ')"
elif ar t "$BUILD/libmx.a" | grep -q '^backend_cuda_absent\.o$'; then
    ok "expert-svc: no libcudart/libcublas/libnccl/libopenblas; libmx.a holds the CUDA stub"
else
    bad "libmx.a of $BUILD has no backend_cuda_absent.o (built with CUDA=1?)"
fi

# 2. quiet rules: a scratch BUILD dir with a copy of $BUILD's objects (not the build dirs that
# may be nested in it), one object made older than its source
scratch="$tmp/build"
mkdir -p "$scratch/tests"
for d in core router gen cli gateway attention-svc expert-svc bin; do
    [ -d "$BUILD/$d" ] && cp -a "$BUILD/$d" "$scratch/"
done
for d in rpc tokenizer; do [ -d "$BUILD/tests/$d" ] && cp -a "$BUILD/tests/$d" "$scratch/tests/"; done
cp -a "$BUILD"/*.a "$BUILD/config.stamp" "$scratch/"
# the copied .d files name $BUILD's paths; rewrite them so make sees the scratch objects as built
find "$scratch" -name '*.d' -exec sed -i "s|^$BUILD/|$scratch/|" {} +
touch -d '2000-01-01' "$scratch/core/error.o"
out=$(timeout 600 make -s --no-print-directory "${config[@]}" BUILD="$scratch" "$scratch/core/error.o" 2>&1)
if [ "$out" = "  CC   core/error.o" ]; then ok "make V=0: one short line ($out)"
else bad "make V=0 printed: $out"; fi
touch -d '2000-01-01' "$scratch/core/error.o"
out=$(timeout 600 make --no-print-directory "${config[@]}" V=1 BUILD="$scratch" "$scratch/core/error.o" 2>&1)
if grep -qE '^(cc|gcc|clang).* -c core/error\.c -o .*/core/error\.o$' <<<"$out" && grep -q -- '-Wshadow' <<<"$out"; then
    ok "make V=1: the full command line"
else bad "make V=1 printed: $out"; fi

# 3. a missing package stops the build with its name
out=$(make -s "${config[@]}" BUILD="$scratch" PKGS="jansson mx-no-such-package" "$scratch/core/error.o" 2>&1)
if [ $? -ne 0 ] && grep -q "mx-no-such-package" <<<"$out"; then ok "missing package named: $(head -c 120 <<<"$out")"
else bad "missing package: $out"; fi

# 4. mx --version
want=$(git describe --tags --dirty 2>/dev/null || cat VERSION)
got=$("$BUILD/bin/mx" --version)
if [ "$got" = "mx $want" ]; then ok "mx --version: $got"; else bad "mx --version: '$got', want 'mx $want'"; fi

# 5. make install into DESTDIR, then a program built against it through pkg-config
dest="$tmp/dest"
# (-o: the recompiled error.o above does not make every program relink)
out=$(timeout 600 make -s "${config[@]}" -o "$scratch/core/error.o" BUILD="$scratch" PREFIX=/opt/mx DESTDIR="$dest" install 2>&1)
rc=$?
root="$dest/opt/mx"
missing=
for f in bin/mx bin/gateway bin/attention-svc bin/expert-svc lib/libmx.a lib/pkgconfig/mx.pc \
         include/mx/core/model.h include/mx/core/error.h include/mx/core/log.h include/mx/core/rpc/server.h \
         include/mx/core/tokenizer/tokenizer.h include/mx/mx/v1/generation.pb-c.h; do
    [ -e "$root/$f" ] || missing="$missing $f"
done
if [ $rc -eq 0 ] && [ -z "$missing" ]; then ok "make install: binaries, libmx.a, headers, mx.pc under DESTDIR"
else bad "make install (exit $rc):$missing $out"; fi
# mx.pc says prefix=/opt/mx; pkg-config's sysroot maps it into DESTDIR
export PKG_CONFIG_PATH="$root/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest"
flags=$(pkg-config --cflags --libs mx 2>&1)
if [ $? -eq 0 ] && grep -q -- "-I$root/include/mx" <<<"$flags" && grep -q -- "-lmx" <<<"$flags"; then
    ok "pkg-config --cflags --libs mx: $(pkg-config --modversion mx)"
else bad "pkg-config mx: $flags"; fi
cat >"$tmp/hello.c" <<'EOF'
/* a user of the installed library: a model config from JSON and an error through mx_error */
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "core/log.h"

int main(int argc, char **argv)
{
    mx_error err = {0};
    mx_config c;
    int rc = mx_config_load(argc > 1 ? argv[1] : "/nonexistent/config.json", &c, &err);
    printf("%d %s\n", rc != 0, strlen(err.msg) ? "error-set" : "no-error");
    mx_log_level l;
    return mx_log_level_parse("warn", &l, &err) == 0 && l == MX_LOG_WARN ? 0 : 1;
}
EOF
# shellcheck disable=SC2046
if out=$(cc -std=c11 $san -o "$tmp/hello" "$tmp/hello.c" $(pkg-config --cflags --libs mx) 2>&1) \
   && [ "$("$tmp/hello")" = "1 error-set" ]; then
    ok "a C program compiles and links against the installed libmx (pkg-config mx)"
else bad "program against installed libmx: $out"; fi
# every installed header compiles on its own with only mx.pc's flags
n=0 badh=
while IFS= read -r h; do
    rel=${h#"$root/include/mx/"}
    printf '#include "%s"\nint mx_header_check_%d;\n' "$rel" "$n" >"$tmp/h.c"
    cc -std=c11 -D_GNU_SOURCE -fsyntax-only $(pkg-config --cflags mx) "$tmp/h.c" >/dev/null 2>&1 || badh="$badh $rel"
    n=$((n + 1))
done < <(find "$root/include/mx" -name '*.h')
if [ -z "$badh" ] && [ "$n" -gt 20 ]; then ok "all $n installed headers compile on their own"
else bad "installed headers that do not compile alone:$badh"; fi
finish
