#!/bin/sh
# The tests run jobs as an ordinary user, the way pbs_mom runs them: create that user once.
set -eu
user=${MOM_TEST_USER:-momtest}
if id "$user" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "add-test-user: not root: the tests that need the user '$user' will skip" >&2
    exit 0
fi
useradd --create-home --shell /bin/sh "$user"
echo "add-test-user: created $user"
