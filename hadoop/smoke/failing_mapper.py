#!/usr/bin/env python3
"""A mapper that fails on purpose: writes a recognisable message to stderr and exits 1."""
import sys

sys.stdin.readline()
print("HADOOP-DEV-SMOKE deliberate failure: bad input record (this is stderr)", file=sys.stderr)
print("Traceback (most recent call last):\n  ValueError: pretend something broke", file=sys.stderr)
sys.exit(1)
