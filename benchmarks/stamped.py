"""Run a command and copy its output (stdout and stderr) to a file, each line prefixed with the seconds since
the command started: "time from process start to validation BLEU X" for a program whose log has no clock.

    python benchmarks/stamped.py LOG -- mt train -c configs/peer_joeynmt.yaml ...
A line is what ends in a newline; tqdm's carriage-return updates stay inside the line they precede."""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> int:
    log, sep, *command = sys.argv[1:]
    if sep != "--" or not command:
        sys.exit("usage: stamped.py LOG -- COMMAND [ARGS...]")
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            out.write(f"[{time.monotonic() - start:9.2f}s] {line.decode(errors='replace')}")
            out.flush()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
