#!/usr/bin/env python3
"""The reference side of ferry's Whisper tests: every operation here uses the PyPI `whisper` package.

  create PATH RETENTIONS XFF AGG            whisper.create
  update PATH NOW JSON_POINTS               whisper.update_many (points: [[t, v], ...])
  fetch PATH FROM UNTIL NOW                 whisper.fetch -> JSON [[from, until, step], values]
  archives PATH                             every archive's valid points -> JSON {step: {t: v}}
  tree-points ROOT                          every .wsp under ROOT -> JSON {metric: {t: v}} (finest archive)
  check-fill SRC DST_BEFORE DST_AFTER UNTIL NOW
        checks the merge rules archive by archive with whisper's own reads and prints a JSON verdict
"""
import json, sys
import whisper

archive_fetch = getattr(whisper, "__archive_fetch")


def raw_archives(path):
    """{secondsPerPoint: (points, [(timestamp, value) per slot])}: the archives exactly as stored."""
    import struct
    info = whisper.info(path)
    out = {}
    with open(path, "rb") as fh:
        for a in info["archives"]:
            fh.seek(a["offset"])
            raw = fh.read(a["size"])
            out[a["secondsPerPoint"]] = (a["points"], [struct.unpack("!Ld", raw[i * 12:(i + 1) * 12]) for i in range(a["points"])])
    return out


def slot_times(path):
    """{secondsPerPoint: (base, points, {slot: timestamp})} as stored, for telling a newer lap from a gap."""
    return {step: (slots[0][0], n, {i: t for i, (t, _) in enumerate(slots)}) for step, (n, slots) in raw_archives(path).items()}


def valid_points(path):
    """{secondsPerPoint: {timestamp: value}} for every slot holding an interval its position allows
    (the base places it there); stale laps are dropped by the callers' time windows."""
    out = {}
    for step, (n, slots) in raw_archives(path).items():
        base = slots[0][0]
        out[step] = {t: v for t, v in slots if t != 0 and base and (t - base) % step == 0}
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "create":
        path, ret, xff, agg = sys.argv[2:6]
        archives = [tuple(int(x) for x in r.split(":")) for r in ret.split(",")]
        whisper.create(path, archives, xFilesFactor=float(xff), aggregationMethod=agg)
    elif cmd == "update":
        path, now, pts = sys.argv[2], int(sys.argv[3]), json.load(open(sys.argv[4]))
        whisper.update_many(path, [tuple(p) for p in pts], now=now)
    elif cmd == "fetch":
        path, f, u, now = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        r = whisper.fetch(path, f, u, now=now)
        print(json.dumps(r))
    elif cmd == "tree-points":
        import os
        root = sys.argv[2]
        out = {}
        for d, _, files in os.walk(root):
            for f in files:
                if f.endswith(".wsp"):
                    p = os.path.join(d, f)
                    metric = os.path.relpath(p, root)[:-4].replace(os.sep, ".")
                    pts = valid_points(p)
                    out[metric] = pts[min(pts)] if pts else {}
        print(json.dumps(out))
    elif cmd == "archives":
        print(json.dumps(valid_points(sys.argv[2])))
    elif cmd == "check-fill":
        src, before, after = (valid_points(p) for p in sys.argv[2:5])
        until, now = int(sys.argv[5]), int(sys.argv[6])
        info = whisper.info(sys.argv[4])
        slots = slot_times(sys.argv[4])
        verdict = {"clobbered": 0, "missed": 0, "invented": 0, "filled": 0, "kept": 0, "superseded": 0, "examples": []}
        steps = [a["secondsPerPoint"] for a in info["archives"]]
        method, xff = info["aggregationMethod"], info["xFilesFactor"]

        def rederived(step, t):
            """A coarse slot may change when the finer archive gained points in its interval; it must then equal
            the reference aggregate of the finer archive after the merge (carbon's propagation)."""
            i = steps.index(step)
            if i == 0:
                return False
            fine = steps[i - 1]
            ts = range(t, t + step, fine)
            if not any(u in after[fine] and u not in before[fine] for u in ts):
                return False
            neighbors = [after[fine].get(u) for u in ts]
            known = [v for v in neighbors if v is not None]
            if not known or len(known) / len(neighbors) < xff:
                return False
            return whisper.aggregate(method, known, neighbors) == after[step].get(t)

        for a in info["archives"]:
            step, ret = a["secondsPerPoint"], a["retention"]
            s, b, f = src.get(step, {}), before[step], after[step]
            src_ret = next((x["retention"] for x in whisper.info(sys.argv[2])["archives"] if x["secondsPerPoint"] == step), None)
            oldest = now - min(ret, src_ret or ret)
            for t in range(oldest - oldest % step + step, now + 1, step):
                got = f.get(t)
                if t in b and got != b[t] and rederived(step, t):
                    verdict["rederived"] = verdict.get("rederived", 0) + 1
                elif t in b:
                    verdict["kept" if got == b[t] or (got != got and b[t] != b[t]) else "clobbered"] += 1
                    if got != b[t] and len(verdict["examples"]) < 5:
                        verdict["examples"].append(["clobbered", step, t, b[t], got])
                elif t <= until and t in s:
                    base, npts, times = slots[step]
                    if base and times[((t - base) // step) % npts] > t:
                        verdict["superseded"] += 1  # the slot holds a newer lap (live data): correct to keep
                    elif got == s[t]:
                        verdict["filled"] += 1
                    else:
                        verdict["missed"] += 1
                        if len(verdict["examples"]) < 5:
                            verdict["examples"].append(["missed", step, t, s[t], got])
                elif got is not None and t <= until:
                    if src_ret is not None:
                        verdict["invented"] += 1
                        if len(verdict["examples"]) < 5:
                            verdict["examples"].append(["invented", step, t, None, got])
        print(json.dumps(verdict))
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
