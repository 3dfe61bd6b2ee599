#!/bin/sh
# Build dist/mom-checkpoint-<version>-1.<arch>.rpm and its source RPM with rpmbuild (what `make rpm`
# runs) from packaging/rpm/mom-checkpoint.spec.
#
# It makes the spec's two sources, then builds offline from them:
#   mom-checkpoint-VERSION.tar.gz         the project, packaging/, docs/ and the man pages (build-man.sh)
#   mom-checkpoint-VERSION-wheels.tar.gz  `pip wheel` of the project and its runtime dependencies
# On Debian (rpm >= 4.18 from Debian's `rpm` package: make packaging-tools) rpmbuild runs with
# --nodeps, since Debian's rpm database knows none of the spec's BuildRequires, and with the
# project venv's pip (same interpreter as /usr/bin/python3, which Debian ships without pip).
#
#   VENV              the project's virtualenv (make venv); default .venv
#   SOURCE_DATE_EPOCH build time and file times in the package; default the last commit's time
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
SPEC=packaging/rpm/mom-checkpoint.spec
umask 022
export LC_ALL=C.UTF-8 TZ=UTC

say() { echo "build-rpm: $*"; }
die() { echo "build-rpm: $*" >&2; exit 1; }

command -v rpmbuild >/dev/null 2>&1 || die "rpmbuild is missing: make packaging-tools (Debian's rpm package)"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV: run make venv"
venv_python=$(cd "$VENV" && pwd)/bin/python

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' mom_checkpoint/__init__.py)
spec_version=$(sed -n 's/^Version: *//p' "$SPEC")
[ "$version" = "$spec_version" ] ||
    die "$SPEC says Version: $spec_version but mom_checkpoint/__init__.py says $version: update the spec (and its %changelog)"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y mom_checkpoint/__init__.py)
fi
export SOURCE_DATE_EPOCH

work=$ROOT/build/rpm
name=mom-checkpoint-$version
rm -rf "$work"
mkdir -p "$work/SOURCES" "$work/$name" "$work/wheels" dist

# Source0: the work tree's project and packaging files, and the man pages generated now.
tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md LICENSE mom_checkpoint packaging docs |
    tar -xf - -C "$work/$name"
OUT=$work/$name/man VENV=$VENV sh scripts/build-man.sh >/dev/null
# Source1: wheels only; psutil's is a manylinux one (cp36-abi3).
say "pip wheel (the project and its dependencies)"
if ! "$VENV/bin/python" -m pip wheel --disable-pip-version-check --prefer-binary \
    --wheel-dir "$work/wheels" "$work/$name" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    die "pip wheel failed"
fi
find "$work/$name" "$work/wheels" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar_opts="--sort=name --owner=0 --group=0 --numeric-owner --mtime=@$SOURCE_DATE_EPOCH"
# shellcheck disable=SC2086
(cd "$work" && tar $tar_opts -cf - "$name" | gzip -9n >"SOURCES/$name.tar.gz")
# shellcheck disable=SC2086
(cd "$work" && tar $tar_opts -cf - wheels | gzip -9n >"SOURCES/$name-wheels.tar.gz")

say "rpmbuild -ba $SPEC"
if ! rpmbuild -ba --nodeps \
    --define "_topdir $work" \
    --define "_sourcedir $work/SOURCES" \
    --define "_rpmdir $ROOT/dist" \
    --define "_srcrpmdir $ROOT/dist" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "mc_pip $venv_python -m pip" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_buildhost reproducible" \
    "$SPEC" >"$work/rpmbuild.log" 2>&1; then
    tail -n 40 "$work/rpmbuild.log" >&2
    die "rpmbuild failed (whole log: $work/rpmbuild.log)"
fi
arch=$(rpm --eval '%{_arch}')
rpm_file=dist/$name-1.$arch.rpm
[ -f "$rpm_file" ] || die "rpmbuild made no $rpm_file (log: $work/rpmbuild.log)"
say "$rpm_file ($(du -k "$rpm_file" | cut -f1) KiB), dist/$name-1.src.rpm"
