#!/usr/bin/env python3
"""The tests' independent expectation for a Ceres node converted to Whisper (none of ferry's code).

  ceres_expect.py NODE_DIR NOW RETENTIONS XFF METHOD

Reads the node's slice files itself (`<start>@<step>.slice`, big-endian doubles, NaN for no value), and prints
JSON {secondsPerPoint: {timestamp: value}} for every archive slot of RETENTIONS ("60:2880,600:4320") that the
conversion must fill, by the rule: a slot takes the finest slice step that divides the archive's step and has
enough known points (known/total >= XFF, or one point at the archive's own step), aggregated with METHOD as
whisper aggregates (whisper.py's aggregate()). Within one step, a newer slice (later start) shadows older ones
from its start on, as ceres reads them. Slots are those of whisper's window: after NOW - retention, up to NOW.
"""
import json
import math
import os
import struct
import sys


def aggregate(method, known, neighbors):
    # As whisper.aggregate (whisper 1.1.10).
    if method == "average":
        return float(sum(known)) / float(len(known))
    if method == "sum":
        return float(sum(known))
    if method == "last":
        return known[-1]
    if method == "max":
        return max(known)
    if method == "min":
        return min(known)
    if method == "avg_zero":
        return float(sum(known)) / float(len(neighbors))
    if method == "absmax":
        return max(known, key=abs)
    if method == "absmin":
        return min(known, key=abs)
    raise SystemExit("unknown method " + method)


def slices(node):
    out = []
    for name in os.listdir(node):
        if not name.endswith(".slice"):
            continue
        start, step = name[:-6].split("@")
        data = open(os.path.join(node, name), "rb").read()
        values = [None if math.isnan(v) else v for v in struct.unpack("!%dd" % (len(data) // 8), data)]
        out.append((int(start), int(step), values))
    return out


def values_at(node_slices, step):
    """{timestamp: value or None} of the slices of one step, newer shadowing older from its start on."""
    mine = sorted((s for s in node_slices if s[1] == step), key=lambda s: s[0])
    out = {}
    for i, (start, _, values) in enumerate(mine):
        shadow = mine[i + 1][0] if i + 1 < len(mine) else None
        for k, v in enumerate(values):
            t = start + k * step
            if shadow is not None and t >= shadow:
                break
            out[t] = v
    return out


def main():
    node, now, retentions, xff, method = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
    xff = struct.unpack("!f", struct.pack("!f", xff))[0]  # whisper keeps the factor as a 32-bit float
    node_slices = slices(node)
    steps = sorted({s[1] for s in node_slices})
    per_step = {s: values_at(node_slices, s) for s in steps}
    result = {}
    for part in retentions.split(","):
        spp, points = (int(x) for x in part.split(":"))
        oldest = now - spp * points
        first = oldest - oldest % spp + spp
        last = now - now % spp
        got = {}
        t = first
        while t <= last:
            for s in steps:
                if spp % s:
                    continue
                factor = spp // s
                group = [per_step[s].get(t + k * s) for k in range(factor)]
                known = [v for v in group if v is not None]
                if known and (factor == 1 or float(len(known)) / float(factor) >= xff):
                    got[str(t)] = known[0] if factor == 1 else aggregate(method, known, group)
                    break
            t += spp
        result[str(spp)] = got
    print(json.dumps(result))


if __name__ == "__main__":
    main()
