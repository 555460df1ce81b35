#!/bin/sh
# Static musl builds for balena devices (issue 4); the Makefile's aarch64/armv7/x86_64/dist/size targets.
#
#   static.sh build ARCH...   cargo build --release --target <triple> (rustup target add first if needed)
#   static.sh dist ARCH...    build, then copy to dist/<docker arch>/
#   static.sh size ARCH...    print each dist/ binary's size and its budget
#   static.sh check ARCH...   fail (exit 1) when a dist/ binary is over its budget
#                             (dist/, not target/: what make test just built and ran, even if another
#                             cargo run rewrites target/ meanwhile)
#   static.sh image PLATFORM NAME
#                             dist for PLATFORM (linux/arm64, linux/arm/v7, linux/amd64), then the root
#                             Dockerfile's FROM scratch image, tagged NAME:<docker arch>
#
# ARCH is aarch64, armv7 or x86_64. dist/ uses Docker's TARGETARCH names (arm64, arm, amd64) so the root
# Dockerfile can pick the binary for the platform it builds. A target that rustup cannot install is
# reported with a loud SKIPPED line and does not fail the build; the tests skip it the same way.
# Linking uses rust-lld (.cargo/config.toml). The one C and assembly code, ring's (TLS), is compiled by
# Debian's clang for every target (see c_env), so no gcc cross toolchain is needed.
#
# TLS=off builds without the `tls` cargo feature (no rustls, ring or roots), in target/notls and
# dist/notls/, against the smaller budgets: `make size` checks both builds.
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
BIN=balena-multi-container-telemetry
if [ "${TLS:-on}" = off ]; then
    FEATURES=--no-default-features
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/notls"
    DIST=dist/notls
else
    FEATURES=
    DIST=dist
fi

triple() {
    case "$1" in
        aarch64) echo aarch64-unknown-linux-musl ;;
        armv7) echo armv7-unknown-linux-musleabihf ;;
        x86_64) echo x86_64-unknown-linux-musl ;;
        *) echo "unknown arch '$1' (aarch64, armv7 or x86_64)" >&2; exit 2 ;;
    esac
}

docker_arch() {
    case "$1" in
        aarch64) echo arm64 ;;
        armv7) echo arm ;;
        x86_64) echo amd64 ;;
    esac
}

# Stripped sizes in bytes. aarch64's are the issues' budgets: 1,000 KiB with TLS (rustls, ring and the
# public roots), 450 KiB without; 32-bit Thumb-2 code is denser, so armv7 gets the same; x86_64 code runs
# about 12% larger than aarch64's (std + musl alone: 363 KiB vs 325 KiB), so it gets 512 KiB without TLS,
# and 1,200 KiB with it: ring's x86_64 assembly carries several CPU variants (AES-NI, AVX2, VAES).
# Override with SIZE_BUDGET_<ARCH>=bytes.
budget() {
    case "$1-${TLS:-on}" in
        aarch64-off) echo "${SIZE_BUDGET_AARCH64:-460800}" ;;
        armv7-off) echo "${SIZE_BUDGET_ARMV7:-460800}" ;;
        x86_64-off) echo "${SIZE_BUDGET_X86_64:-524288}" ;;
        aarch64-*) echo "${SIZE_BUDGET_AARCH64:-1024000}" ;;
        armv7-*) echo "${SIZE_BUDGET_ARMV7:-1024000}" ;;
        x86_64-*) echo "${SIZE_BUDGET_X86_64:-1228800}" ;;
    esac
}

# ring (TLS) compiles C and assembly for the target. Debian's clang is a cross compiler for every
# architecture (--target picks it), and for musl targets other than x86_64 ring includes no libc header
# (it passes -nostdlibinc to clang), so no sysroot is needed; x86_64 uses the host's headers. Without
# unwind tables: the device build aborts on a panic and never unwinds (128 KiB less on aarch64).
# CC_TARGET / AR_TARGET choose other tools.
c_env() {
    [ -n "$FEATURES" ] && return 0
    if ! command -v "${CC_TARGET:-clang}" >/dev/null 2>&1; then
        echo "${CC_TARGET:-clang} is needed to compile ring (TLS) for $1: apt-get install clang llvm" \
            "(or build without TLS: TLS=off)" >&2
        exit 1
    fi
    v=$(triple "$1" | tr - _)
    case "$(triple "$1")" in
        arm-*) flags="--target=arm-linux-musleabi -march=armv6 -mfloat-abi=soft" ;;
        *) flags="--target=$(triple "$1")" ;;
    esac
    ar=${AR_TARGET:-$(command -v llvm-ar || echo ar)}
    export "CC_$v=${CC_TARGET:-clang}" "AR_$v=$ar" \
        "CFLAGS_$v=$flags -fno-asynchronous-unwind-tables -fno-unwind-tables"
}

skipped() {
    echo "" >&2
    echo "#### SKIPPED: $1 ####" >&2
    echo "" >&2
}

# True when the target's standard library is there (or rustup just installed it).
have_target() {
    t=$(triple "$1")
    command -v rustup >/dev/null 2>&1 || return 0 # no rustup: let cargo say what is missing
    rustup target list --installed 2>/dev/null | grep -qx "$t" && return 0
    echo "rustup target add $t" >&2
    if out=$(rustup target add "$t" 2>&1); then
        return 0
    fi
    # rustup's own message, without the stack trace RUST_BACKTRACE may add to it.
    printf '%s\n' "$out" | sed '/^Stack backtrace/,$d' >&2
    skipped "$1 target not installable (rustup target add failed)"
    return 1
}

# The device build rebuilds std for size with the `immediate-abort` panic strategy: a panic (a bug; no
# input can cause one) aborts at once, so std's panic message formatting, backtrace symbolisation
# (gimli, addr2line, miniz, demangling) and unwinder are not linked. That halves the binary (aarch64:
# 621 KiB with the prebuilt std, 304 KiB this way, measured). -Zbuild-std and -Cpanic=immediate-abort are
# unstable options: RUSTC_BOOTSTRAP=1 lets this stable toolchain take them, and they need the rust-src
# component. STD=prebuilt builds with the prebuilt std instead (plain `cargo build --target` does too).
build() {
    have_target "$1" || return 0
    c_env "$1"
    if [ "${STD:-rebuilt}" = prebuilt ] || ! have_rust_src; then
        "$CARGO" build --release --target "$(triple "$1")" $FEATURES
        return
    fi
    RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="${RUSTFLAGS:-} -Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no" \
        "$CARGO" build --release --target "$(triple "$1")" -Z build-std=std,panic_abort $FEATURES
}

have_rust_src() {
    command -v rustup >/dev/null 2>&1 || return 1
    rustup component list --installed 2>/dev/null | grep -q '^rust-src' && return 0
    rustup component add rust-src >&2 && return 0
    skipped "rust-src not installable: building with the prebuilt std, which is over the size budget"
    return 1
}

path() {
    echo "${CARGO_TARGET_DIR:-target}/$(triple "$1")/release/$BIN"
}

# buildx when the client has it; otherwise the classic builder, which does not set TARGETARCH itself.
image() {
    case "$1" in
        linux/arm64 | linux/arm64/v8) arch=aarch64 ;;
        linux/arm | linux/arm/v7) arch=armv7 ;;
        linux/amd64) arch=x86_64 ;;
        *) echo "unsupported PLATFORM '$1' (linux/arm64, linux/arm/v7, linux/amd64)" >&2; exit 2 ;;
    esac
    dist "$arch"
    if [ ! -f "dist/$(docker_arch "$arch")/$BIN" ]; then
        echo "no $arch binary to put in the image (see the SKIPPED line above)" >&2
        exit 1
    fi
    tag="$2:$(docker_arch "$arch")"
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --platform "$1" --load -t "$tag" .
    else
        DOCKER_BUILDKIT=0 docker build --platform "$1" --build-arg "TARGETARCH=$(docker_arch "$arch")" -t "$tag" .
    fi
    echo "image: $tag"
}

dist() {
    build "$1"
    if [ -f "$(path "$1")" ]; then
        mkdir -p "$DIST/$(docker_arch "$1")"
        cp "$(path "$1")" "$DIST/$(docker_arch "$1")/$BIN"
        echo "$DIST/$(docker_arch "$1")/$BIN"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$cmd" = image ]; then
    [ $# = 2 ] || { echo "usage: $0 image PLATFORM NAME" >&2; exit 2; }
    image "$1" "$2"
    exit 0
fi
[ $# -gt 0 ] || set -- aarch64 armv7 x86_64
status=0
for arch in "$@"; do
    triple "$arch" >/dev/null
    case "$cmd" in
        build) build "$arch" ;;
        dist) dist "$arch" ;;
        size | check)
            p="$DIST/$(docker_arch "$arch")/$BIN"
            if [ ! -f "$p" ]; then
                if [ "$cmd" = check ]; then skipped "size check for $arch: $p was not built"; else echo "$arch: not built ($p)"; fi
                continue
            fi
            size=$(wc -c < "$p" | tr -d ' ')
            limit=$(budget "$arch")
            line="$arch${FEATURES:+ without TLS}: $size bytes ($((size / 1024)) KiB), budget $limit bytes ($((limit / 1024)) KiB): $p"
            if [ "$size" -gt "$limit" ] && [ "$cmd" = check ]; then
                echo "SIZE CHECK FAILED: $line" >&2
                status=1
            elif [ "$size" -gt "$limit" ]; then
                echo "$line  <-- OVER BUDGET"
            else
                echo "$line"
            fi
            ;;
        *) echo "usage: $0 build|dist|size|check [aarch64|armv7|x86_64]..." >&2; exit 2 ;;
    esac
done
[ "$cmd" = size ] && exit 0
exit $status
