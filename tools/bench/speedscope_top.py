#!/usr/bin/env python3
"""Inclusive time per frame of a speedscope (evented) profile, per thread, for host profiles of tapml runs.

Make the profile from an EventPipe trace (scripts/gpu-bench.sh's host-trace section writes one on the GPU machine):
    dotnet-trace convert q4-host.nettrace --format speedscope -o q4-host.json
    python3 tools/bench/speedscope_top.py q4-host.speedscope.json --focus PipelinedGreedy --top 60
--focus keeps only samples whose stack holds a frame containing that text (e.g. the greedy decode loop), so the
percentages are shares of that part of the run. Test tooling only; tapml does not run it."""
import argparse
import collections
import json

ap = argparse.ArgumentParser()
ap.add_argument("profile")
ap.add_argument("--focus", default=None, help="keep samples whose stack has a frame containing this text")
ap.add_argument("--top", type=int, default=50)
a = ap.parse_args()
d = json.load(open(a.profile))
names = [f["name"] for f in d["shared"]["frames"]]
for p in d["profiles"]:
    stack, last, total = [], None, 0.0
    incl = collections.Counter()
    for e in p["events"]:
        if last is not None and stack:
            frames = [names[i] for i in stack]
            if a.focus is None or any(a.focus in n for n in frames):
                dt = e["at"] - last
                total += dt
                for n in set(frames):
                    incl[n] += dt
        last = e["at"]
        if e["type"] == "O":
            stack.append(e["frame"])
        else:
            stack.pop()
    if total < 100:
        continue
    print(f"== {p['name']}: {total:.1f} {p.get('unit', 'ms')} sampled")
    for n, v in incl.most_common(a.top):
        print(f"{v:10.1f} {v / total * 100:5.1f}% {n[:160]}")
