#!/usr/bin/env bash
# Builds one distributable artefact into target/dist/ (docs/distribution.md):
#
#   bash packaging/build.sh wheel     the PyPI wheel (manylinux2014, via zig) and the sdist
#   bash packaging/build.sh musl      the static Linux binary, .tar.gz + .sha256
#   bash packaging/build.sh image     the container image smtp2gmail:VERSION (podman; FROM scratch,
#                                     the musl binary, which it builds first if missing)
#   bash packaging/build.sh windows   the Windows binary (.zip + .sha256) and wheel, cross-built
#                                     with Debian's mingw-w64
#   bash packaging/build.sh macos     on Linux: `cargo-zigbuild check` of both Apple targets (no
#                                     macOS SDK here); on macOS: the binary (.tar.gz) and wheel
#   bash packaging/build.sh windows-check   no artefact: clippy of the library, the binary and the
#                                     unit tests for Windows (-D warnings)
#   bash packaging/build.sh lint      no artefact: actionlint on the release workflow, and
#                                     `cargo publish --dry-run` (the crate packages and builds)
#
# It installs what it needs itself: Debian packages (apt-get, when missing), Rust targets
# (rustup), and maturin, zig and cargo-zigbuild in a venv at target/packaging-venv (pinned in
# packaging/requirements.txt). The release workflow runs this same script on its runners.
#
# Environment:
#   ARCH=x86_64|aarch64   the CPU of the Linux artefacts (default: this machine's); aarch64 is
#                         cross-built with cargo-zigbuild
#   PLATFORMS=linux/amd64,linux/arm64   image: a multi-arch manifest from the musl binaries of
#                         each (default: this machine's architecture only)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIST=target/dist
VENV=target/packaging-venv
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
case "${ARCH:-$(uname -m)}" in
    x86_64 | amd64) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    *) echo "build.sh: unsupported ARCH ${ARCH:-$(uname -m)}" >&2; exit 2 ;;
esac
mkdir -p "$DIST"

say() { printf '== build.sh: %s\n' "$*" >&2; }

# Debian packages, installed only when one of the commands is missing (CI, a new machine).
need_apt() { # COMMAND... -- PACKAGE...
    local missing=0
    while [ "$1" != "--" ]; do command -v "$1" >/dev/null 2>&1 || missing=1; shift; done
    shift
    [ "$missing" = 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "build.sh: needs the packages $* (no apt-get here: install them yourself)" >&2
        exit 1
    fi
    say "installing $*"
    local root=()
    [ "$(id -u)" = 0 ] || root=(sudo) # a CI runner's user
    [ -n "${APT_UPDATED:-}" ] || { "${root[@]}" apt-get update -qq; APT_UPDATED=1; }
    "${root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# maturin, zig and cargo-zigbuild from PyPI, in a venv of their own.
need_python_tools() {
    if [ ! -x "$VENV/bin/maturin" ] || [ ! -x "$VENV/bin/actionlint" ] ||
        ! cmp -s packaging/requirements.txt "$VENV/requirements.txt"; then
        say "installing packaging/requirements.txt into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q -r packaging/requirements.txt
        cp packaging/requirements.txt "$VENV/requirements.txt"
    fi
    PATH="$PWD/$VENV/bin:$PATH"
    export PATH
}

need_rust_target() {
    rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

# ARCHIVE NAME from BINARY (+ README, licences, changelog), and NAME.sha256 in sha256sum's format.
archive() { # BINARY ARCHIVE
    local binary=$1 name=$2 base stage out="$PWD/$DIST/$2"
    base=${name%.zip}
    base=${base%.tar.gz}
    stage=$(mktemp -d)
    mkdir "$stage/$base"
    cp "$binary" README.md CHANGELOG.md LICENSE-MIT LICENSE-APACHE "$stage/$base/"
    case "$name" in
        *.zip) (cd "$stage" && python3 -m zipfile -c "$out" "$base") ;;
        *) tar -C "$stage" -czf "$out" "$base" ;;
    esac
    rm -rf "$stage"
    # sha256sum's format; macOS has shasum instead.
    if command -v sha256sum >/dev/null; then
        (cd "$DIST" && sha256sum "$name" >"$name.sha256")
    else
        (cd "$DIST" && shasum -a 256 "$name" >"$name.sha256")
    fi
    say "$DIST/$name ($(du -h "$out" | cut -f1); binary $(du -h "$binary" | cut -f1))"
}

musl_binary() { echo "target/$ARCH-unknown-linux-musl/dist-release/smtp2gmail"; }

build_musl() {
    local triple="$ARCH-unknown-linux-musl"
    need_rust_target "$triple"
    if [ "$ARCH" = x86_64 ] && [ "$(uname -m)" = x86_64 ]; then
        # Debian's musl-gcc for ring's C; static-pie, as Rust links musl by default.
        need_apt musl-gcc -- musl-tools
        cargo build --locked --profile dist-release --target "$triple" --bin smtp2gmail
    else
        need_python_tools
        cargo zigbuild --locked --profile dist-release --target "$triple" --bin smtp2gmail
    fi
    archive "$(musl_binary)" "smtp2gmail-$VERSION-$triple.tar.gz"
}

build_wheel() {
    local triple="$ARCH-unknown-linux-gnu"
    need_python_tools
    need_rust_target "$triple"
    # zig links against glibc 2.17's symbols: the wheel installs on any distribution since 2014.
    maturin build --locked --zig --compatibility manylinux2014 --target "$triple" --out "$DIST"
    maturin sdist --out "$DIST"
}

build_windows() {
    local triple=x86_64-pc-windows-gnu
    need_apt x86_64-w64-mingw32-gcc -- gcc-mingw-w64-x86-64-posix
    need_python_tools
    need_rust_target "$triple"
    # One cargo build for both: the wheel's binary is the archive's.
    maturin build --locked --target "$triple" --out "$DIST"
    archive "target/$triple/dist-release/smtp2gmail.exe" "smtp2gmail-$VERSION-$triple.zip"
}

check_windows() {
    local triple=x86_64-pc-windows-gnu
    need_apt x86_64-w64-mingw32-gcc -- gcc-mingw-w64-x86-64-posix
    need_rust_target "$triple"
    # The integration tests' shared helpers (tests/common) are Unix-only: not checked.
    cargo clippy --locked --target "$triple" --lib --bins --profile test -- -D warnings
}

build_macos() {
    need_python_tools
    if [ "$(uname -s)" = Darwin ]; then
        local triple="$ARCH-apple-darwin"
        need_rust_target "$triple"
        maturin build --locked --target "$triple" --out "$DIST"
        archive "target/$triple/dist-release/smtp2gmail" "smtp2gmail-$VERSION-$triple.tar.gz"
        return
    fi
    # Linking needs the macOS SDK (CoreFoundation, SystemConfiguration), which only a Mac has:
    # here the code is type-checked, C dependencies included, for both Apple targets.
    for triple in x86_64-apple-darwin aarch64-apple-darwin; do
        need_rust_target "$triple"
        cargo-zigbuild check --locked --profile dist-release --target "$triple" --bin smtp2gmail
    done
    say "macOS: both targets check (binaries come from the release workflow's macOS runners)"
}

# The image holds the static binary, an empty /tmp (mode 1777: large messages spill there) and
# the data directory; packaging/Dockerfile copies this context and pulls no base image.
build_image() {
    # runc as well: podman's first choice, crun, cannot set the container's limits in this VM
    # (packaging/smoke.sh runs the image with runc).
    need_apt podman runc -- podman runc
    local platforms=${PLATFORMS:-linux/$( [ "$ARCH" = x86_64 ] && echo amd64 || echo arm64 )}
    local context=target/image-context platform arch
    rm -rf "$context"
    mkdir -p "$context/rootfs/tmp" "$context/rootfs/etc/smtp2gmail" "$context/data"
    chmod 1777 "$context/rootfs/tmp"
    chmod 0700 "$context/data"
    printf 'root:x:0:0:root:/:/nonexistent\nsmtp2gmail:x:10001:10001:smtp2gmail:/var/lib/smtp2gmail:/nonexistent\n' \
        >"$context/rootfs/etc/passwd"
    printf 'root:x:0:\nsmtp2gmail:x:10001:\n' >"$context/rootfs/etc/group"
    for platform in ${platforms//,/ }; do
        arch=${platform#linux/}
        local saved=$ARCH
        ARCH=$([ "$arch" = amd64 ] && echo x86_64 || echo aarch64)
        if [ ! -x "$(musl_binary)" ]; then
            # The release workflow's image job has the archives the linux job built.
            local archive="$DIST/smtp2gmail-$VERSION-$ARCH-unknown-linux-musl.tar.gz"
            if [ -f "$archive" ]; then
                mkdir -p "$(dirname "$(musl_binary)")"
                tar -xzf "$archive" -O "$(basename "$archive" .tar.gz)/smtp2gmail" >"$(musl_binary)"
                chmod 0755 "$(musl_binary)"
            else
                build_musl
            fi
        fi
        mkdir -p "$context/$arch"
        cp "$(musl_binary)" "$context/$arch/smtp2gmail"
        ARCH=$saved
    done
    # --format docker: OCI images have no HEALTHCHECK, and podman and Docker would drop it.
    local build=(podman build --format docker --file packaging/Dockerfile --build-arg "VERSION=$VERSION")
    if [ "$platforms" = "${platforms/,/}" ]; then
        local previous
        previous=$(podman image inspect --format '{{.Id}}' "smtp2gmail:$VERSION" 2>/dev/null || true)
        "${build[@]}" --platform "$platforms" --tag "smtp2gmail:$VERSION" "$context"
        # A rebuild leaves the previous image untagged: removed unless a container still uses it.
        [ -z "$previous" ] || podman rmi "$previous" >/dev/null 2>&1 || true
    else
        # The name may hold a single-arch image (the workflow smoke-tests that first) or a list.
        podman manifest rm "smtp2gmail:$VERSION" >/dev/null 2>&1 || true
        podman rmi "smtp2gmail:$VERSION" >/dev/null 2>&1 || true
        "${build[@]}" --platform "$platforms" --manifest "smtp2gmail:$VERSION" "$context"
    fi
    say "image smtp2gmail:$VERSION ($platforms)"
}

lint() {
    need_python_tools
    actionlint -no-color .github/workflows/*.yml
    say "actionlint: the workflows are clean"
    cargo publish --dry-run --locked
}

case "${1:-}" in
    lint) lint ;;
    wheel) build_wheel ;;
    musl) build_musl ;;
    image) build_image ;;
    windows) build_windows ;;
    windows-check) check_windows ;;
    macos) build_macos ;;
    *)
        echo "usage: bash packaging/build.sh wheel|musl|image|windows|macos|windows-check|lint" >&2
        exit 2 ;;
esac
