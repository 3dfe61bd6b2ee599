#!/bin/sh
# Build dist/mom-checkpoint_<version>_<arch>.deb with dpkg-deb (what `make deb` runs).
#
# Self-contained: Debian 12's python3-structlog and python3-filelock are older than the project
# needs, so the project and its runtime dependencies are installed with `pip install --target` into
# /usr/lib/mom-checkpoint, byte-compiled there, and started by three small wrappers in /usr/sbin that
# put that folder first on a python3 -I -S path. psutil's compiled module and the byte code are for
# the build machine's python3 X.Y, so the package depends on python3 (>= X.Y), python3 (<< X.(Y+1)):
# build it on the Debian release it is for. See docs/PACKAGING.md.
#
#   VENV              the project's virtualenv on /usr/bin/python3 (make venv): its pip and
#                     argparse-manpage do the build; default .venv
#   SOURCE_DATE_EPOCH timestamps in the package; default the last commit's time
#   DEB_MAINTAINER    the Maintainer field
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
MAINTAINER=${DEB_MAINTAINER:-mom-checkpoint developers <mom-checkpoint@localhost>}
LIB=/usr/lib/mom-checkpoint
SYSTEM_PYTHON=/usr/bin/python3
umask 022
export LC_ALL=C.UTF-8 TZ=UTC

say() { echo "build-deb: $*"; }
die() { echo "build-deb: $*" >&2; exit 1; }

for tool in dpkg-deb dpkg gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (a Debian machine is needed)"
done
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV: run make venv"
[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON is missing"
pyver=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
build_pyver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "$build_pyver" ] ||
    die "$VENV is python $build_pyver but the package runs on $SYSTEM_PYTHON ($pyver): rebuild the venv (make clean venv)"
pynext=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' mom_checkpoint/__init__.py)
[ -n "$version" ] || die "no __version__ in mom_checkpoint/__init__.py"
arch=$(dpkg --print-architecture)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y mom_checkpoint/__init__.py)
fi
export SOURCE_DATE_EPOCH

work=$ROOT/build/deb
stage=$work/root
rm -rf "$work"
mkdir -p "$work/src" "$stage/DEBIAN" dist

# 1. The project from the work tree (no stale build/ or egg-info of earlier builds), with its
#    runtime dependencies, into /usr/lib/mom-checkpoint. pip talks to PyPI here (wheels only where
#    there are wheels; psutil has them).
tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md LICENSE mom_checkpoint |
    tar -xf - -C "$work/src"
say "pip install --target $LIB (the project and its dependencies)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-compile --no-warn-script-location \
    --prefer-binary --target "$stage$LIB" "$work/src" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    die "pip install failed"
fi
# pip's console scripts name the build venv's python; the wrappers below replace them.
rm -rf "$stage$LIB/bin"
find "$stage$LIB" -name direct_url.json -path '*.dist-info/*' -delete
"$VENV/bin/python" -c 'import sys; sys.path.insert(0, sys.argv[1]); import mom_checkpoint, psutil, structlog, filelock, blake3, msgspec' \
    "$stage$LIB" || die "the installed libraries do not import"

# 2. The three programs. -I ignores PYTHON* variables, the user's site and the current folder (the
#    hook runs as root, mom-checkpoint-run in the job's environment); -S keeps Debian's own python3-*
#    packages off the path, and saves start-up time.
install -d -m 0755 "$stage/usr/sbin"
for spec in mom-checkpoint:checkpoint mom-restart:restart mom-checkpoint-run:run; do
    program=${spec%%:*}
    module=${spec#*:}
    cat >"$stage/usr/sbin/$program" <<WRAPPER
#!$SYSTEM_PYTHON -IS
# $program from the mom-checkpoint package: the program and its libraries are in $LIB.
import sys

sys.path.insert(0, "$LIB")
from mom_checkpoint.cli.$module import main

sys.exit(main())
WRAPPER
    chmod 0755 "$stage/usr/sbin/$program"
done

# 3. Configuration, spool, log rotation.
install -D -m 0644 packaging/config.toml "$stage/etc/mom-checkpoint/config.toml"
install -D -m 0644 packaging/logrotate.d-mom-checkpoint "$stage/etc/logrotate.d/mom-checkpoint"
install -D -m 0644 packaging/tmpfiles.d-mom-checkpoint.conf "$stage/usr/lib/tmpfiles.d/mom-checkpoint.conf"
# The tick timer (periodic checkpoints on TORQUE 5.1.2-6.1.x), installed but not enabled: the
# administrator turns it on (systemctl enable --now mom-checkpoint-tick.timer) where it is wanted.
for unit in mom-checkpoint-tick.service mom-checkpoint-tick.timer mom-checkpoint-vault-sync.service; do
    install -d -m 0755 "$stage/lib/systemd/system"
    sed 's#/usr/local/sbin/#/usr/sbin/#' "packaging/systemd/$unit" >"$stage/lib/systemd/system/$unit"
done

# 4. Man pages (generated now from the parsers as they are), gzipped.
OUT=$work/man VENV=$VENV sh scripts/build-man.sh >/dev/null
install -d -m 0755 "$stage/usr/share/man/man8"
for page in "$work"/man/*.8; do
    gzip -9n <"$page" >"$stage/usr/share/man/man8/$(basename "$page").gz"
done

# 5. Documentation: copyright (the project's and every vendored library's), examples, the lines
#    for pbs_mom's mom_priv/config and the (inactive) sudoers rule for users' restarts, with this
#    package's paths.
doc=$stage/usr/share/doc/mom-checkpoint
install -d -m 0755 "$doc/examples"
{
    cat packaging/deb/copyright.in
    "$VENV/bin/python" scripts/vendored_licenses.py "$stage$LIB" "$LIB"
} >"$doc/copyright"
install -m 0644 packaging/examples/* "$doc/examples/"
sed 's#/usr/local/sbin/#/usr/sbin/#' packaging/mom_priv-config >"$doc/mom_priv-config"
grep -q /usr/local/sbin "$doc/mom_priv-config" && die "mom_priv-config still names /usr/local/sbin"
sed 's#/usr/local/sbin/#/usr/sbin/#' packaging/sudoers-mom-restart >"$doc/sudoers-mom-restart"
sed 's#/usr/local/sbin/#/usr/sbin/#' packaging/openpbs-mom_priv-config >"$doc/openpbs-mom_priv-config"
sed 's#/usr/local/sbin/#/usr/sbin/#' packaging/cron.d-mom-checkpoint-tick >"$doc/cron.d-mom-checkpoint-tick"
gzip -9n <README.md >"$doc/README.md.gz"
for page in docs/*.md; do  # the documents the README points to (security model, CRIU, figures)
    gzip -9n <"$page" >"$doc/$(basename "$page").gz"
done

# 6. Byte code, so that no program compiles at start-up (as the job's user it could not save it).
#    checked-hash: valid whatever the files' times become, and identical from build to build.
"$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode checked-hash -s "$stage" -p / "$stage$LIB" >/dev/null ||
    die "byte-compiling $LIB failed"

# 7. Control files.
setpriv_pkg=$(dpkg -S "$(command -v setpriv || echo /usr/bin/setpriv)" 2>/dev/null | cut -d: -f1 | head -n 1)
depends="python3 (>= $pyver), python3 (<< $pynext), ${setpriv_pkg:-util-linux}"
printf '/etc/mom-checkpoint/config.toml\n/etc/logrotate.d/mom-checkpoint\n' >"$stage/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/postrm "$stage/DEBIAN/"

# Everyone may read and run what the package installs (the job's user runs mom-checkpoint-run).
chmod -R u+rwX,go+rX,go-w "$stage"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\./##' | LC_ALL=C sort |
    xargs -d '\n' md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    -e "s/@INSTALLED_SIZE@/$size/" -e "s/@DEPENDS@/$depends/" -e "s/@PYTHON_VERSION@/$pyver/" \
    packaging/deb/control.in >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control"

# 8. The package: every file root's, every time the last commit's.
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb=dist/mom-checkpoint_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
say "$deb ($(du -k "$deb" | cut -f1) KiB; Depends: $depends)"
