#!/usr/bin/python3
"""Runs the compiled program NATIVE_PROGRAM in this process's place (exec, the same pid and output): a
job's application for tests.helpers.Site.start_job, which starts Python applications (the benchmark's
C job, floats.c)."""

import os
import sys

program = os.environ["NATIVE_PROGRAM"]
os.execv(program, [program, *sys.argv[1:]])
