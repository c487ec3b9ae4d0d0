#!/bin/sh
# Build the DNS sender map's BPF object from its source, or (--check) rebuild it and compare it
# byte for byte with the committed one, as CI does: users need no compiler, and what is
# committed is exactly what the source compiles to.
#
# linux/bpf.h needs the multiarch asm/ headers (linux-libc-dev). Needs clang and llvm (llvm-strip) and libbpf-dev (bpf_helpers.h); Debian 12: clang 14.
# Debug information is stripped (-g then llvm-strip -g keeps the BTF that CO-RE needs and drops
# the DWARF, which holds build paths).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
check=0
[ "${1:-}" = "--check" ] && check=1
out="$here/dns_sender.bpf.o"
[ $check = 1 ] && out=$(mktemp) && trap 'rm -f "$out"' EXIT
cd "$here"
clang -O2 -g -target bpf -I/usr/include/"$(uname -m)"-linux-gnu -fdebug-prefix-map="$here"=. \
    -c dns_sender.bpf.c -o "$out"
llvm-strip -g "$out"
if [ $check = 1 ]; then
    if cmp -s "$out" "$here/dns_sender.bpf.o"; then
        echo "dns_sender.bpf.o is what dns_sender.bpf.c compiles to"
    else
        echo "dns_sender.bpf.o differs from a rebuild of dns_sender.bpf.c (fix: agent/sensors/dns/kern/build.sh, then commit the .o)" >&2
        exit 1
    fi
fi
