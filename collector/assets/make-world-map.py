#!/usr/bin/env python3
"""Makes collector/assets/world.tsv, the dashboard's world map, from the npm
package @svg-maps/world 2.0.0 (CC BY 4.0, by VictorCazanave; see NOTICE in
this folder). Run once by hand when the map should change; the build reads
only world.tsv (no network at build time):

    npm pack @svg-maps/world@2.0.0 && tar xzf svg-maps-world-2.0.0.tgz
    python3 make-world-map.py package/index.js > world.tsv

Each output line is `ISO-3166 alpha-2 code<TAB>name<TAB>SVG path` in a
2020 x 1332 view box (the source's 1010 x 666, scaled by 2 and rounded to
whole units; points that do not move dropped, straight runs merged): a few hundred kB instead of
1.2 MB, with no visible difference at dashboard size.
"""
import json
import re
import sys

SCALE = 2


def simplify(path):
    tokens = re.findall(r"[mMzZ]|-?[0-9.]+(?:e[-+]?[0-9]+)?", path)
    out = []
    x = y = 0.0
    start = (0.0, 0.0)
    i = 0
    ring = []
    rings = []
    while i < len(tokens):
        t = tokens[i]
        if t in "zZ":
            x, y = start
            if ring:
                rings.append(ring)
            ring = []
            i += 1
            continue
        if t == "m":
            i += 1
            first = True
            while i + 1 < len(tokens) and tokens[i] not in "mMzZ":
                x += float(tokens[i])
                y += float(tokens[i + 1])
                i += 2
                if first:
                    if ring:
                        rings.append(ring)
                    ring = []
                    start = (x, y)
                    first = False
                ring.append((round(x * SCALE), round(y * SCALE)))
            continue
        raise SystemExit(f"unexpected path command {t!r}")
    if ring:
        rings.append(ring)
    for r in rings:
        pts = [r[0]]
        for p in r[1:]:
            if p != pts[-1]:
                pts.append(p)
        if len(pts) < 3:
            continue
        deltas = []
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            dx, dy = bx - ax, by - ay
            if deltas:
                ox, oy = deltas[-1]
                if ox * dy == oy * dx and ox * dx + oy * dy > 0:
                    deltas[-1] = (ox + dx, oy + dy)
                    continue
            deltas.append((dx, dy))
        if len(deltas) < 2:
            continue
        s = f"M{pts[0][0]} {pts[0][1]}"
        for dx, dy in deltas:
            s += f"l{dx} {dy}"
        out.append(s + "z")
    return "".join(out)


def main():
    text = open(sys.argv[1]).read()
    data = json.loads(text[text.index("{"):].rstrip().rstrip(";"))
    for loc in data["locations"]:
        code = loc["id"].upper()
        if len(code) != 2:
            continue  # US minor outlying islands by sub-code: shown as UM
        path = simplify(loc["path"])
        if path:
            print(f"{code}\t{loc['name']}\t{path}")


main()
