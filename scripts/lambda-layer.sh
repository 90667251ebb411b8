#!/usr/bin/env bash
# Builds the AWS Lambda layer: target/rds-iam-sidecar-layer-<arch>.zip holding
# extensions/rds-iam-sidecar (Lambda starts every file in /opt/extensions/ as an external
# extension). The binary is linked against glibc 2.26 with cargo-zigbuild, so it runs on the
# Amazon Linux 2 and Amazon Linux 2023 runtimes; the script checks that no newer glibc symbol
# slipped in.
#
# Needs: cargo-zigbuild (`cargo install cargo-zigbuild`), zig (on PATH, or `pip install
# ziglang`), zip, objdump. Usage:
#   scripts/lambda-layer.sh            # x86_64
#   scripts/lambda-layer.sh aarch64    # arm64 (Graviton) functions
#   scripts/lambda-layer.sh all
# Publish: aws lambda publish-layer-version --layer-name rds-iam-sidecar \
#   --zip-file fileb://target/rds-iam-sidecar-layer-x86_64.zip --compatible-architectures x86_64
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.26
die() {
    echo "lambda-layer: $*" >&2
    exit 1
}

archs=("${@:-x86_64}")
[[ ${archs[0]} == all ]] && archs=(x86_64 aarch64)
command -v cargo-zigbuild >/dev/null || die "needs cargo-zigbuild: cargo install cargo-zigbuild"
command -v zip >/dev/null || die "needs zip"
command -v objdump >/dev/null || die "needs objdump (binutils)"

for arch in "${archs[@]}"; do
    case $arch in
    x86_64 | aarch64) ;;
    *) die "unknown architecture '$arch' (x86_64, aarch64 or all)" ;;
    esac
    target="$arch-unknown-linux-gnu"
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target" || die "the Rust target $target is not installed and cannot be added"
    fi
    cargo zigbuild --release --locked --target "$target.$GLIBC"
    binary="target/$target/release/rds-iam-sidecar"
    newest=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
    if [[ $(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -1) != "$GLIBC" ]]; then
        die "$binary needs glibc $newest, newer than $GLIBC"
    fi
    stage=$(mktemp -d)
    mkdir "$stage/extensions"
    cp "$binary" "$stage/extensions/rds-iam-sidecar"
    chmod 755 "$stage/extensions/rds-iam-sidecar"
    name=rds-iam-sidecar-layer-$arch.zip
    rm -f "target/$name"
    (cd "$stage" && zip -qr "$OLDPWD/target/$name" extensions)
    rm -rf "$stage"
    echo "target/$name: extensions/rds-iam-sidecar for $arch, glibc symbols up to $newest"
done
