"""The kernel exec guard (eBPF) and the generic libbpf binding it is loaded with."""
