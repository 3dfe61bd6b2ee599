#!/bin/sh
# Install a CRIU >= 4 that works on this kernel, as docs/CRIU-INSTALL.md explains.
#  - Debian 13 (trixie) or newer: the distribution's own package.
#  - Debian 12 (bookworm): CRIU 3.17 fails on kernels >= 6.x, so trixie's packages are downloaded with
#    apt-get (a private sources list; the system's own lists are never touched), unpacked into
#    $CRIU_ROOT, and run through a wrapper at $CRIU_WRAPPER that uses the unpacked folder's own loader.
# Idempotent: does nothing when `criu check` already passes with a version >= 4.
set -eu

CRIU_ROOT=${CRIU_ROOT:-/opt/mom-checkpoint/criu}
CRIU_WRAPPER=${CRIU_WRAPPER:-/usr/local/sbin/criu}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

criu_ok() {
    command -v criu >/dev/null 2>&1 || return 1
    major=$(criu --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\).*/\1/p')
    [ -n "$major" ] && [ "$major" -ge 4 ] && criu check >/dev/null 2>&1
}

if criu_ok; then
    echo "install-criu: $(criu --version | head -n 1) already works"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-criu: must run as root to install CRIU" >&2
    exit 77
fi

debian_major=$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo 0)
case "$debian_major" in
    ''|*[!0-9]*) debian_major=0 ;;
esac

if [ "$debian_major" -ge 13 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q criu
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/debs"
    cat >"$work/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt_opts="-o Dir::Etc::sourcelist=- -o Dir::Etc::sourceparts=$work -o Dir::State::Lists=$work/lists -o Dir::Cache::archives=$work/debs -o Debug::NoLocking=1"
    # shellcheck disable=SC2086
    apt-get $apt_opts update -q
    packages="criu libcompel1 libc6 libgnutls30t64 libnftables1 libnl-3-200 libnet1 libprotobuf-c1 libbsd0
        libuuid1 libmd0 libnftnl11 libmnl0 libjansson4 libxtables12 libgmp10 libp11-kit0 libidn2-0
        libunistring5 libtasn1-6 libnettle8t64 libhogweed6t64 libffi8 libedit2 libtinfo6 libbrotli1 zlib1g
        libzstd1 libcap2"
    (cd "$work/debs" && apt-get $apt_opts download $packages)
    rm -rf "$CRIU_ROOT.new"
    mkdir -p "$CRIU_ROOT.new"
    for deb in "$work"/debs/*.deb; do
        dpkg -x "$deb" "$CRIU_ROOT.new"
    done
    rm -rf "$CRIU_ROOT"
    mv "$CRIU_ROOT.new" "$CRIU_ROOT"
    libdir="$CRIU_ROOT/usr/lib/x86_64-linux-gnu"
    mkdir -p "$(dirname "$CRIU_WRAPPER")"
    cat >"$CRIU_WRAPPER.new" <<WRAPPER
#!/bin/sh
# CRIU from Debian 13, unpacked into $CRIU_ROOT by mom-checkpoint's scripts/install-criu.sh
exec $libdir/ld-linux-x86-64.so.2 --library-path $libdir $CRIU_ROOT/usr/sbin/criu "\$@"
WRAPPER
    chmod 0755 "$CRIU_WRAPPER.new"
    mv "$CRIU_WRAPPER.new" "$CRIU_WRAPPER"
fi

if ! criu_ok; then
    echo "install-criu: CRIU was installed but 'criu check' fails:" >&2
    criu check >&2 || true
    exit 69
fi
echo "install-criu: $(criu --version | head -n 1) works"
