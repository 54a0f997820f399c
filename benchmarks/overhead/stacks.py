"""Summarise py-spy's collapsed stacks (``--format raw``): where the samples are, by function.

    python benchmarks/overhead/stacks.py profile.txt [--top 40] [--match router/]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r":\d+\)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--match", default="", help="only count frames whose text contains this")
    args = ap.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(args.path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            # Coroutines resumed by uvloop show partial stacks: group frames by function, not by line.
            frames = [_LINE.sub(")", f) for f in stack.split(";")[1:]] or ["(process)"]
            own[frames[-1]] += n
            for frame in set(frames):
                if args.match in frame:
                    inclusive[frame] += n
    print(f"{total} samples\n\n== inclusive ==")
    for frame, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("\n== own ==")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
