"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: where the worker's time goes.

    python bench/profile_summary.py bench/results/profile-typical-*.txt [--top 30]

Prints the functions with the largest inclusive share (time on the stack) and self share (time
at the top of the stack), as a percentage of all samples. Idle samples (the event loop waiting in
``select``/``epoll``) are reported separately, so percentages are of busy time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once \(uvloop)|run_forever \(uvloop")
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def summarise(path: Path, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if "select" in frames[-1] or "epoll" in frames[-1] or "poll (" in frames[-1]:
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    total = busy or 1
    out = [
        f"{path.name}: {busy} busy samples, {idle} idle samples",
        "",
        "Inclusive (% of busy samples)",
    ]
    out += [f"{n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "Self (% of busy samples)"]
    out += [f"{n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    sys.stdout.write(summarise(args.file, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
