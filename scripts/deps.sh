#!/usr/bin/env bash
# Installs what building and testing pairfs needs beyond rustup's toolchain: the rustfmt and
# clippy components, and a C linker (rustc links through `cc`). Quiet when all is present.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain first (https://rustup.rs)" >&2
    exit 1
fi

for comp in rustfmt clippy; do
    probe="cargo-fmt"
    [ "$comp" = clippy ] && probe="cargo-clippy"
    if ! command -v "$probe" >/dev/null 2>&1 || ! "$probe" --version >/dev/null 2>&1; then
        echo "installing the $comp component"
        rustup component add "$comp"
    fi
done

if ! command -v cc >/dev/null 2>&1; then
    echo "no C linker (cc) found: installing build-essential"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "apt-get not available: install a C compiler (cc) by hand" >&2
        exit 1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q build-essential
fi

# `make bench` compares replication with rsync (a local rsync daemon and `rsync -a --fsync`).
if ! command -v rsync >/dev/null 2>&1; then
    echo "rsync not found (the replication benchmark compares with it): installing rsync"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "apt-get not available: install rsync by hand" >&2
        exit 1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync
fi

# The chaos run (`make test`, `make chaos`) partitions a storage server with a network namespace
# (`ip netns`, veth); without `ip` it skips only that fault kind and says so.
if ! command -v ip >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "ip not found (the chaos run partitions with network namespaces): installing iproute2"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 ||
            echo "could not install iproute2: the chaos run will skip its partition fault" >&2
    else
        echo "ip not found and no apt-get: the chaos run will skip its partition fault" >&2
    fi
fi

# The status page test renders the name server's page in headless Chromium; without it that
# test says SKIPPED.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "chromium not found (the status page test renders the page in it): installing chromium"
        { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } ||
            echo "could not install chromium: the status page test will be SKIPPED" >&2
    else
        echo "chromium not found and no apt-get: the status page test will be SKIPPED" >&2
    fi
fi
