"""Checks under emulation, kept apart from the exporters: int8 answers on ARM cores (`arm64_check`, qemu-user) and on
AVX2-only x86 kernels (`avx2_check`, qemu-x86_64). Diagnostics, not part of making or scoring a model; the make
targets `arm64-check` and `avx2-check` run them ([docs/arm64.md], [docs/avx2-emulated.md])."""
