#!/usr/bin/env bash
# Provision an aarch64 Python with ONNX Runtime under user-mode emulation, for `make arm64-check`; with the
# argument `qemu`, only the emulators (enough for `make avx2-check`, which runs the host's own venv under
# qemu-x86_64: docs/avx2-emulated.md).
#
# Everything lands in one ignored cache folder (default .arm64/) and nothing on the host changes: apt runs with
# private state (its own sources list, package lists, status file and download folder), packages are unpacked
# with `dpkg -x`, wheels are installed with `pip --target`. Each stage leaves a stamp, so a second run is a no-op
# and an interrupted one resumes.
#   qemu/     Debian trixie's qemu-user (10.x): its qemu-aarch64 and qemu-x86_64 are static and run on bookworm.
#             Bookworm's 7.2 is not enough: it lacks the emulated /proc/cpuinfo ONNX Runtime's CPU probe reads,
#             and gets int8 wrong with SME on.
#   sysroot/  bookworm arm64 python3.11 and the libraries it and ONNX Runtime link (qemu-aarch64 -L sysroot).
#   site/     aarch64 wheels: onnxruntime, numpy and edgeqa's other runtime dependencies (make arm64-shapes runs
#             `edgeqa shapes --time` there; make arm64-check runs sessions on arrays, nothing more).
#   run-python  wrapper: `QEMU_CPU=neoverse-n1 .arm64/run-python script.py` (binfmt_misc is not needed).
set -euo pipefail

CACHE=$(realpath -m "${ARM64_CACHE:-.arm64}")
PIP=${PIP:-.venv/bin/pip}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
ORT_VERSION=${ORT_VERSION:-1.32.0}
NUMPY_SPEC=${NUMPY_SPEC:-numpy>=1.26,<2}
RUNTIME_WHEELS=("tokenizers==0.22.2" "pyyaml>=6" "tqdm>=4.66" "psutil>=5.9")  # as pyproject.toml's dependencies
# Trixie's key must be in the keyring (bookworm's debian-archive-keyring 2023.3+deb12u1 has it).

log() { echo "arm64-env: $*" >&2; }

# apt-get with a private state in $CACHE/apt/NAME, for architecture ARCH and one SUITE of the Debian mirror.
apt_private() {
    local name=$1 arch=$2 suite=$3
    shift 3
    local dir=$CACHE/apt/$name
    mkdir -p "$dir/lists/partial" "$dir/archives/partial" \
        "$dir/etc/preferences.d" "$dir/etc/apt.conf.d" "$dir/etc/sources.list.d"
    touch "$dir/status"
    echo "deb [arch=$arch signed-by=$KEYRING] $MIRROR $suite main" >"$dir/etc/sources.list"
    apt-get -q \
        -o Dir::Etc="$dir/etc" -o Dir::Etc::SourceList="$dir/etc/sources.list" \
        -o Dir::Etc::SourceParts="$dir/etc/sources.list.d" -o Dir::Etc::Parts="$dir/etc/apt.conf.d" \
        -o Dir::Etc::PreferencesParts="$dir/etc/preferences.d" \
        -o Dir::State="$dir" -o Dir::State::Lists="$dir/lists" -o Dir::State::status="$dir/status" \
        -o Dir::Cache="$dir" -o Dir::Cache::archives="$dir/archives" \
        -o APT::Architecture="$arch" -o APT::Architectures::="$arch" \
        -o APT::Sandbox::User=root -o Debug::NoLocking=1 -o APT::Install-Recommends=false \
        "$@"
}

QEMU_TARGETS=(aarch64 x86_64)

stage_qemu() {
    local stamp=$CACHE/qemu/.done target
    if [[ -f $stamp ]]; then
        # A cache made before qemu-x86_64 was kept lacks it: provision again.
        for target in "${QEMU_TARGETS[@]}"; do [[ -x $CACHE/qemu/usr/bin/qemu-$target ]] || rm -f "$stamp"; done
        [[ -f $stamp ]] && return
    fi
    log "qemu-user from Debian trixie"
    apt_private trixie-amd64 amd64 trixie update >/dev/null
    local debs=$CACHE/apt/trixie-amd64/debs
    rm -rf "$CACHE/qemu" "$debs" && mkdir -p "$debs" "$CACHE/qemu/usr/bin"
    (cd "$debs" && apt_private trixie-amd64 amd64 trixie download qemu-user >/dev/null)
    # The package holds every target's emulator (about 450 MB unpacked); only the aarch64 and x86_64 ones are kept.
    dpkg --fsys-tarfile "$debs"/qemu-user_*.deb | tar -x -C "$CACHE/qemu" "${QEMU_TARGETS[@]/#/./usr/bin/qemu-}"
    rm -rf "$debs"
    "$CACHE/qemu/usr/bin/qemu-aarch64" --version | head -1 >"$CACHE/qemu/VERSION"
    touch "$stamp"
}

stage_sysroot() {
    local stamp=$CACHE/sysroot/.done
    [[ -f $stamp ]] && return
    log "bookworm arm64 python3.11 sysroot"
    apt_private bookworm-arm64 arm64 bookworm update >/dev/null
    apt_private bookworm-arm64 arm64 bookworm install --download-only -y python3.11 libstdc++6 >/dev/null
    rm -rf "$CACHE/sysroot" && mkdir -p "$CACHE/sysroot"
    local deb
    for deb in "$CACHE"/apt/bookworm-arm64/archives/*.deb; do
        dpkg -x "$deb" "$CACHE/sysroot"
    done
    rm -f "$CACHE"/apt/bookworm-arm64/archives/*.deb
    touch "$stamp"
}

stage_wheels() {
    # edgeqa's runtime dependencies too, so that `edgeqa shapes --time` runs emulated (make arm64-shapes); the stamp
    # holds the list, so a cache made with fewer wheels is provisioned again.
    local stamp=$CACHE/site/.done wheels=("onnxruntime==$ORT_VERSION" "$NUMPY_SPEC" "${RUNTIME_WHEELS[@]}")
    [[ -f $stamp && $(cat "$stamp") == "${wheels[*]}" ]] && return
    log "aarch64 wheels: ${wheels[*]}"
    rm -rf "$CACHE/site"
    "$PIP" install -q --disable-pip-version-check --target "$CACHE/site" --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_17_aarch64 --platform any "${wheels[@]}"
    echo "${wheels[*]}" >"$stamp"
}

write_wrapper() {
    cat >"$CACHE/run-python" <<EOF
#!/bin/sh
# aarch64 python3.11 under qemu-aarch64; the emulated CPU comes from QEMU_CPU (e.g. neoverse-n1, max).
# sys.executable is this wrapper, so that a child Python (edgeqa times each model in one) runs emulated too.
export PYTHONPATH="$CACHE/site\${PYTHONPATH:+:\$PYTHONPATH}" PYTHONNOUSERSITE=1 PYTHONEXECUTABLE="$CACHE/run-python"
exec "$CACHE/qemu/usr/bin/qemu-aarch64" -L "$CACHE/sysroot" "$CACHE/sysroot/usr/bin/python3.11" "\$@"
EOF
    chmod +x "$CACHE/run-python"
}

main() {
    mkdir -p "$CACHE"
    local t0=$SECONDS
    stage_qemu
    if [[ ${1:-} == qemu ]]; then
        log "ready in $((SECONDS - t0)) s: $(cat "$CACHE/qemu/VERSION") (emulators only)"
        return
    fi
    stage_sysroot
    stage_wheels
    write_wrapper
    QEMU_CPU=neoverse-n1 "$CACHE/run-python" -c 'import numpy, onnxruntime' ||
        { log "the emulated python cannot import onnxruntime; remove $CACHE and retry"; exit 1; }
    log "ready in $((SECONDS - t0)) s: $(cat "$CACHE/qemu/VERSION")"
}

main "$@"
