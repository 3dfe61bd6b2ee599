"""The counter in user, PID and mount namespaces of the job user's own making (``unshare -Urpf``): what
a user would do to make root's CRIU run in namespaces they arranged (issue 28)."""

import os
import sys
from pathlib import Path

counter = str(Path(__file__).with_name("counter.py"))
os.execvp(
    "unshare",
    ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", sys.executable, counter],
)
