#!/bin/sh
# Install Debian packages the project needs (apt-get update once per machine first).
set -eu
if [ "$(id -u)" -ne 0 ]; then
    echo "apt-install: needs root to install: $*" >&2
    exit 77
fi
if [ ! -e /var/lib/apt/lists/lock ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ]; then
    apt-get update -q
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
