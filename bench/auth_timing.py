#!/usr/bin/env python3
"""Wall time of a refused password login: an existing user with a wrong
password against a user that does not exist (docs/HARDENING.md).

Usage: bench/auth_timing.py PORT USER [ROUNDS]
against a running `dropzone serve` on 127.0.0.1:PORT where USER exists.
Each login comes from its own 127.0.1.N address so that the failure
penalty (per source) stays out of the measurement; needs sshpass.
"""
import statistics
import subprocess
import sys
import time

port, user = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 12
times = {user: [], "no-such-user-xyz": []}
n = 0
for _ in range(rounds):
    for name in times:
        n += 1
        cmd = ["sshpass", "-p", "wrong-password", "ssh", "-F", "/dev/null",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "PreferredAuthentications=password",
               "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
               "-o", f"BindAddress=127.0.1.{n % 250 + 1}", "-p", port,
               f"{name}@127.0.0.1", "true"]
        start = time.monotonic()
        result = subprocess.run(cmd, capture_output=True)
        elapsed = time.monotonic() - start
        if result.returncode == 0:
            sys.exit(f"{name}: the wrong password was accepted")
        times[name].append(elapsed)
for name, values in times.items():
    values = values[2:]  # warm-up
    print(f"{name:18s} n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
          f"min={min(values) * 1000:.0f} max={max(values) * 1000:.0f}")
