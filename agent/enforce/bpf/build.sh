#!/bin/sh
# Build the exec guard's BPF object from its source, or (--check) rebuild it and compare it
# byte for byte with the committed one, as CI does: users need no compiler, and what is
# committed is exactly what the source compiles to.
#
# Needs clang and llvm (llvm-strip) and libbpf-dev (bpf_helpers.h); Debian 12: clang 14.
# Debug information is stripped (-g then llvm-strip -g keeps the BTF that CO-RE needs and drops
# the DWARF, which holds build paths).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
check=0
[ "${1:-}" = "--check" ] && check=1
out="$here/exec_guard.bpf.o"
[ $check = 1 ] && out=$(mktemp) && trap 'rm -f "$out"' EXIT
cd "$here"
clang -O2 -g -target bpf -fdebug-prefix-map="$here"=. \
    -c exec_guard.bpf.c -o "$out"
llvm-strip -g "$out"
if [ $check = 1 ]; then
    if cmp -s "$out" "$here/exec_guard.bpf.o"; then
        echo "exec_guard.bpf.o is what exec_guard.bpf.c compiles to"
    else
        echo "exec_guard.bpf.o differs from a rebuild of exec_guard.bpf.c (fix: agent/enforce/bpf/build.sh, then commit the .o)" >&2
        exit 1
    fi
fi
