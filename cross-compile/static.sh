#!/bin/sh
# Static musl builds for balena devices (issues 4 and 14); the Makefile's aarch64/armv7/armv6/x86_64/
# dist/size/image targets.
#
#   static.sh build ARCH...   cargo build --release --target <triple>, in the device target directory
#   static.sh dist ARCH...    build, then copy to dist/<docker platform dir>/
#   static.sh size ARCH...    print each dist/ binary's size and its budget
#   static.sh check ARCH...   fail (exit 1) when a dist/ binary is over its budget
#                             (dist/, not target/: what make test just built and ran, even if another
#                             cargo run rewrites target/ meanwhile)
#   static.sh host            dist for this machine's own architecture, also copied to dist/host/: the
#                             root Dockerfile's choice when the builder sets no TARGETARCH (the classic
#                             builder, docker-compose on a plain Docker host)
#   static.sh image PLATFORM NAME
#                             dist for PLATFORM (linux/arm64, linux/arm/v7, linux/arm/v6, linux/amd64),
#                             then the root Dockerfile's FROM scratch image, tagged NAME:<platform> with
#                             the platform as asked for, less `linux/`, `/` made `-` (NAME:arm-v7)
#
# ARCH is aarch64, armv7, armv6 or x86_64 (all four when none is given). dist/ is laid out by Docker
# platform, TARGETARCH[/TARGETVARIANT]: dist/arm64, dist/arm/v7, dist/arm/v6, dist/amd64, so the root
# Dockerfile can pick the binary for the platform it builds.
#
# Device builds have their own target directory (target/device, or $CARGO_TARGET_DIR/device): they
# build with other RUSTFLAGS than `cargo build`/`cargo test`, and sharing one directory made each of
# them rebuild serde and the crate after the other.
# Linking uses rust-lld (.cargo/config.toml). The one C and assembly code, ring's (TLS), is compiled by
# Debian's clang for every target (see c_env), so no gcc cross toolchain is needed.
#
# TLS=off builds without the `tls` cargo feature (no rustls, ring or roots), in target/device-notls and
# dist/notls/, against the smaller budgets: `make size` checks both builds.
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
BIN=balena-multi-container-telemetry
if [ "${TLS:-on}" = off ]; then
    FEATURES=--no-default-features
    TARGET_DIR="${CARGO_TARGET_DIR:-target}/device-notls"
    DIST=dist/notls
else
    FEATURES=
    TARGET_DIR="${CARGO_TARGET_DIR:-target}/device"
    DIST=dist
fi

# One line per device target:
#   arch  Rust triple  dist/ directory (Docker platform)  size budget in bytes  where libc comes from
# libc "rustup": the target's rust-std component (`rustup target add`), which ships musl's crt objects
# and libc.a. Otherwise the directory of Debian's musl-dev for that architecture (the package named in
# the last column): rustup's prebuilt armv7 std cannot be fetched everywhere, and needs not be, since std
# is rebuilt from rust-src anyway; musl for ARMv6 (armel) is Debian's too. No rustup target at all then.
# Budgets: aarch64's is the issue's 450 KiB; 32-bit Arm code is denser, so armv7 and armv6 get the
# same; x86_64 code runs about 12% larger than aarch64's (std + musl alone: 363 KiB vs 325 KiB), so it
# gets 512 KiB. Override with SIZE_BUDGET_<ARCH>=bytes.
TARGETS='
aarch64 aarch64-unknown-linux-musl     arm64  460800 rustup
armv7   armv7-unknown-linux-musleabihf arm/v7 460800 /usr/lib/arm-linux-musleabihf musl-dev:armhf
armv6   arm-unknown-linux-musleabi     arm/v6 460800 /usr/lib/arm-linux-musleabi   musl-dev:armel
x86_64  x86_64-unknown-linux-musl      amd64  524288 rustup
'
ALL_ARCHS=$(echo "$TARGETS" | awk 'NF { printf "%s ", $1 }')

# field ARCH N: column N of ARCH's line.
field() {
    v=$(echo "$TARGETS" | awk -v a="$1" -v n="$2" '$1 == a { print $n }')
    if [ -z "$v" ] && [ "$2" -le 5 ]; then
        echo "unknown arch '$1' (one of: $ALL_ARCHS)" >&2
        exit 2
    fi
    echo "$v"
}
triple() { field "$1" 2; }
dist_dir() { echo "$DIST/$(field "$1" 3)"; }
libc_dir() { field "$1" 5; }
# Column 4 is the budget without TLS. With TLS (rustls, ring and the public roots) the issue's budget is
# 1,000 KiB for aarch64, and 32-bit Arm gets the same; x86_64 gets 1,280 KiB: ring's x86_64 assembly
# carries several CPU variants (AES-NI, AVX2, VAES), and its code runs larger anyway.
budget() {
    override=$(eval "echo \${SIZE_BUDGET_$(echo "$1" | tr '[:lower:]' '[:upper:]'):-}")
    if [ -n "$override" ]; then
        echo "$override"
    elif [ "${TLS:-on}" = off ]; then
        field "$1" 4
    elif [ "$1" = x86_64 ]; then
        echo 1310720
    else
        echo 1024000
    fi
}

# ring (TLS) compiles C and assembly for the target. Debian's clang is a cross compiler for every
# architecture (--target picks it), and for musl targets other than x86_64 ring includes no libc header
# (it passes -nostdlibinc to clang), so no sysroot is needed; x86_64 uses the host's headers. Without
# unwind tables: the device build aborts on a panic and never unwinds (128 KiB less on aarch64).
# CC_TARGET / AR_TARGET choose other tools.
c_env() {
    [ -n "$FEATURES" ] && return 0
    if [ -z "${CC_TARGET:-}" ] && ! command -v clang >/dev/null 2>&1 &&
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing clang and llvm (ring's C and assembly for $1)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang llvm >/dev/null ||
            true
    fi
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
have_rustup_target() {
    t=$(triple "$1")
    command -v rustup >/dev/null 2>&1 || return 0 # no rustup: let cargo say what is missing
    rustup target list --installed 2>/dev/null | grep -qx "$t" && return 0
    echo "rustup target add $t" >&2
    if out=$(rustup target add "$t" 2>&1); then
        return 0
    fi
    # rustup's own message, one line, without the stack trace RUST_BACKTRACE may add to it.
    printf '%s\n' "$out" | sed '/^Stack backtrace/,$d' | grep -m1 -i error >&2 || true
    skipped "$1 target not installable (rustup target add $t failed)"
    return 1
}

# True when Debian's musl for the target is installed, or was just installed (as root with apt-get).
have_debian_musl() {
    dir=$(libc_dir "$1")
    pkg=$(field "$1" 6)
    [ -f "$dir/libc.a" ] && return 0
    debarch=${pkg#*:}
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $pkg (musl for $1)" >&2
        export DEBIAN_FRONTEND=noninteractive
        dpkg --add-architecture "$debarch"
        # A mirror mid-sync can fail one index; what matters is whether the package then installs.
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || true
        [ -f "$dir/libc.a" ] && return 0
    fi
    skipped "$1: $dir/libc.a missing (dpkg --add-architecture $debarch && apt-get update && apt-get install $pkg)"
    return 1
}

have_rust_src() {
    command -v rustup >/dev/null 2>&1 || return 1
    rustup component list --installed 2>/dev/null | grep -q '^rust-src' && return 0
    rustup component add rust-src >&2 && return 0
    skipped "rust-src not installable: building with the prebuilt std, which is over the size budget"
    return 1
}

# Link flags for a target whose libc is Debian's musl rather than rust-std's self-contained copy:
# rustc would look for crt1.o/crti.o/crtn.o, libc.a and libunwind.a in the target's rustlib directory,
# which does not exist without `rustup target add`. So: not self-contained, Debian's directory on the
# library path, its start files around the link (crt1.o and crti.o first, crtn.o last, as a C compiler
# driver would order them), and an empty libunwind.a, which std's `unwind` crate names for static musl
# but nothing calls: with immediate-abort nothing unwinds.
debian_musl_flags() {
    dir=$(libc_dir "$1")
    extra="$TARGET_DIR/musl-extra"
    mkdir -p "$extra"
    [ -f "$extra/libunwind.a" ] || printf '!<arch>\n' >"$extra/libunwind.a"
    extra=$(cd "$extra" && pwd)
    echo "-Clink-self-contained=no -L$dir -L$extra -Zpre-link-arg=$dir/crt1.o -Zpre-link-arg=$dir/crti.o -Clink-arg=$dir/crtn.o"
}

# The device build rebuilds std for size with the `immediate-abort` panic strategy: a panic (a bug; no
# input can cause one) aborts at once, so std's panic message formatting, backtrace symbolisation
# (gimli, addr2line, miniz, demangling) and unwinder are not linked. That halves the binary (aarch64:
# 621 KiB with the prebuilt std, 304 KiB this way, measured). -Zbuild-std, -Cpanic=immediate-abort and
# -Zpre-link-arg are unstable options: RUSTC_BOOTSTRAP=1 lets this stable toolchain take them, and they
# need the rust-src component. STD=prebuilt builds with the prebuilt std instead (rustup targets only).
build() {
    t=$(triple "$1")
    if [ "$(libc_dir "$1")" = rustup ]; then
        have_rustup_target "$1" || return 0
        c_env "$1"
        flags=""
        if [ "${STD:-rebuilt}" = prebuilt ] || ! have_rust_src; then
            CARGO_TARGET_DIR="$TARGET_DIR" "$CARGO" build --release --target "$t" $FEATURES
            return
        fi
    else
        have_debian_musl "$1" || return 0
        if ! have_rust_src; then
            skipped "$1 needs rust-src (its std is always rebuilt: rustup component add rust-src)"
            return 0
        fi
        c_env "$1"
        flags=$(debian_musl_flags "$1")
    fi
    # No unwind tables either: nothing unwinds (130 KB less on aarch64 with TLS, measured). std's
    # `optimize_for_size` picks its smaller variants (sorting, formatting): 12.5 KB less on aarch64; lld
    # folds identical functions (--icf=all; nothing here compares function addresses): 5 KB less. ring's
    # P-256 table is page-aligned: placed first in .rodata (rodata-order.txt) it needs no padding, where
    # after the strings it took up to 4 KB of it, depending on how far they ran past a page (2.3 KB on
    # aarch64 when measured). -Zfmt-debug=shallow makes derived Debug impls print the type or variant name
    # only (hand-written ones, like str's, Path's and rustls' enums', are untouched): nothing the agent
    # says depends on a derived one's fields (the start line is compared with the host build's in
    # tests/static_build.rs), and it is 18 KB less on aarch64 (measured).
    order="$(cd "$(dirname "$0")" && pwd)/rodata-order.txt"
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$TARGET_DIR" \
        RUSTFLAGS="${RUSTFLAGS:-} -Zunstable-options -Zfmt-debug=shallow -Cpanic=immediate-abort -Cforce-unwind-tables=no -Clink-arg=--icf=all -Clink-arg=--symbol-ordering-file=$order -Clink-arg=--no-warn-symbol-ordering $flags" \
        "$CARGO" build --release --target "$t" -Z build-std=std,panic_abort \
        -Z build-std-features=optimize_for_size $FEATURES
}

path() {
    echo "$TARGET_DIR/$(triple "$1")/release/$BIN"
}

# This machine's architecture, by our names, or nothing when it is none of ours.
host_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo x86_64 ;;
        aarch64 | arm64) echo aarch64 ;;
        armv7l | armv8l) echo armv7 ;;
        armv6l) echo armv6 ;;
    esac
}

# The shipped copy leaves out .comment (the compilers' and linker's names and versions: 256 bytes on
# aarch64, nothing that runs); plain cp where llvm-objcopy (Debian's llvm) is not installed.
ship() {
    llvm-objcopy --remove-section=.comment "$1" "$2" 2>/dev/null || cp "$1" "$2"
}

dist() {
    build "$1"
    if [ -f "$(path "$1")" ]; then
        mkdir -p "$(dist_dir "$1")"
        ship "$(path "$1")" "$(dist_dir "$1")/$BIN"
        echo "$(dist_dir "$1")/$BIN"
        # The host's own binary under a name that needs no TARGETARCH (the root Dockerfile's default).
        if [ "$1" = "$(host_arch)" ] && [ -z "$FEATURES" ]; then
            mkdir -p "$DIST/host"
            ship "$(path "$1")" "$DIST/host/$BIN"
        fi
    fi
}

# buildx when the client has it; otherwise the classic builder, which does not set TARGETARCH and
# TARGETVARIANT itself.
image() {
    case "$1" in
        linux/arm64 | linux/arm64/v8) arch=aarch64 ;;
        linux/arm | linux/arm/v7) arch=armv7 ;;
        linux/arm/v6) arch=armv6 ;;
        linux/amd64) arch=x86_64 ;;
        *) echo "unsupported PLATFORM '$1' (linux/arm64, linux/arm/v7, linux/arm/v6, linux/amd64)" >&2; exit 2 ;;
    esac
    dist "$arch"
    if [ ! -f "$(dist_dir "$arch")/$BIN" ]; then
        echo "no $arch binary to put in the image (see the SKIPPED line above)" >&2
        exit 1
    fi
    platform="linux/$(field "$arch" 3)"
    targetarch=${platform#linux/}
    targetarch=${targetarch%%/*}
    variant=""
    case "$platform" in linux/*/*) variant=${platform##*/} ;; esac
    tag="$2:$(echo "${1#linux/}" | tr / -)"
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --platform "$platform" --load -t "$tag" .
    else
        # The classic builder's cache ignores the platform: without --no-cache, a second platform
        # reuses the first one's layers (the FROM scratch base and every COPY), and the image is
        # labelled with the first platform. The image is a few files, so building it afresh is cheap.
        DOCKER_BUILDKIT=0 docker build --no-cache --platform "$platform" \
            --build-arg "TARGETARCH=$targetarch" --build-arg "TARGETVARIANT=$variant" -t "$tag" .
    fi
    echo "image: $tag ($platform)"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$cmd" = host ]; then
    arch=$(host_arch)
    [ -n "$arch" ] || { echo "no device build for this machine's architecture ($(uname -m))" >&2; exit 1; }
    dist "$arch"
    [ -f "$DIST/host/$BIN" ] || { echo "no $arch binary for dist/host (see the SKIPPED line above)" >&2; exit 1; }
    echo "$DIST/host/$BIN"
    exit 0
fi
if [ "$cmd" = image ]; then
    [ $# = 2 ] || { echo "usage: $0 image PLATFORM NAME" >&2; exit 2; }
    image "$1" "$2"
    exit 0
fi
# shellcheck disable=SC2086
[ $# -gt 0 ] || set -- $ALL_ARCHS
status=0
for arch in "$@"; do
    triple "$arch" >/dev/null
    case "$cmd" in
        build) build "$arch" ;;
        dist) dist "$arch" ;;
        size | check)
            p="$(dist_dir "$arch")/$BIN"
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
        *) echo "usage: $0 build|dist|size|check [$ALL_ARCHS]... | host | image PLATFORM NAME" >&2; exit 2 ;;
    esac
done
[ "$cmd" = size ] && exit 0
exit $status
