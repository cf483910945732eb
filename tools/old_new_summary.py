#!/usr/bin/env python3
"""Pairs the rounds of `tools/bench_old_new.sh` output (FILE) into a markdown table: per bench,
the median over rounds of new/old for criterion's medians and for the fastest samples, with the
interquartile range of the paired ratios (a round's two runs are adjacent in time, so their
ratio cancels the slow drifts of a shared machine)."""
import collections, statistics, sys

rows = collections.defaultdict(lambda: collections.defaultdict(dict))
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 5:
        r, v, bench, med, fastest = p
        rows[bench][r][v] = (float(med), float(fastest))


def quartiles(xs):
    xs = sorted(xs)
    return xs[len(xs) // 4], statistics.median(xs), xs[(3 * len(xs)) // 4]


print("| bench | rounds | old median µs | new median µs | new/old medians (IQR) | new/old fastest (IQR) |")
print("|---|---:|---:|---:|---|---|")
for bench, rounds in rows.items():
    pairs = [x for x in rounds.values() if "old" in x and "new" in x]
    if not pairs:  # a bench only one build has (the DRAM-resident shape is new)
        continue
    om = statistics.median(x["old"][0] for x in pairs)
    nm = statistics.median(x["new"][0] for x in pairs)
    q = [quartiles(x["new"][k] / x["old"][k] for x in pairs) for k in (0, 1)]
    cells = [f"{m:.3f} ({lo:.2f}–{hi:.2f})" for lo, m, hi in q]
    print(f"| {bench} | {len(pairs)} | {om:.1f} | {nm:.1f} | {cells[0]} | {cells[1]} |")
