"""Summarises fresh.jsonl, fresh-train.jsonl, from-p3.jsonl, handover.jsonl and paired-60.jsonl (in DIR, default this folder):
means ± standard errors per window of steps, and the paired differences."""
import json, os, statistics as st, sys
D = (sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))) + "/"
def ms(v): return (st.mean(v), st.stdev(v)/len(v)**.5 if len(v)>1 else float('nan'))
def fresh(name, what):
    print(f"== fresh, {what} (same init and batches; 156 warm-up, lr 0.1 held; windows of 130 steps)")
    rows=[json.loads(l)["loss_windows"] for l in open(D + name)]
    n=len(rows); print("streams", n, [r["stream_seed"] for r in rows])
    for w in range(6):
        a,b=ms([r["normlab"][w] for r in rows]), ms([r["torch32"][w] for r in rows])
        d=ms([r["normlab"][w]-r["torch32"][w] for r in rows])
        ahead=sum(r["normlab"][w]>r["torch32"][w] for r in rows)
        print(f"window {w}: normlab {a[0]:.3f}±{a[1]:.3f} torch32 {b[0]:.3f}±{b[1]:.3f} paired {d[0]:+.4f}±{d[1]:.4f} (torch lower in {ahead}/{n})")
fresh('fresh.jsonl', "batches from the model's generator")
fresh('fresh-train.jsonl', "batches as norm-cli train --seed S draws them")
print("== from normlab's plateau state p3 (312 steps at 0.1, windows of 52)")
rows=[json.loads(l)["loss_windows"] for l in open('' + D + 'from-p3.jsonl')]
n=len(rows)
for w in range(6):
    d=ms([r["normlab"][w]-(r["torch32"][w]+r["torch64"][w])/2 for r in rows])
    a,b,c=(ms([r[k][w] for r in rows]) for k in ("normlab","torch32","torch64"))
    print(f"window {w}: normlab {a[0]:.3f} torch32 {b[0]:.3f} torch64 {c[0]:.3f} paired vs mean torch {d[0]:+.4f}±{d[1]:.4f} n={n}")
print("== hand-over at step 260 (then 520 steps at 0.1, windows of 86)")
rows=[json.loads(l) for l in open('' + D + 'handover.jsonl')]
by={}
for r in rows: by.setdefault(r["stream"],{})[r["start"]]=r["loss_windows"]
full=[v for v in by.values() if "N" in v and "T" in v]
print("streams", len(full))
for w in range(6):
    sN=[ (v["N"]["normlab"][w]+v["N"]["torch32"][w])/2 for v in full]
    sT=[ (v["T"]["normlab"][w]+v["T"]["torch32"][w])/2 for v in full]
    tool=[ (v["N"]["normlab"][w]+v["T"]["normlab"][w])/2-(v["N"]["torch32"][w]+v["T"]["torch32"][w])/2 for v in full]
    st_=ms([a-b for a,b in zip(sN,sT)]); tl=ms(tool)
    print(f"window {w}: from normlab's state {st.mean(sN):.3f}, from torch's {st.mean(sT):.3f}: state effect {st_[0]:+.4f}±{st_[1]:.4f}; tool effect (normlab-torch) {tl[0]:+.4f}±{tl[1]:.4f}")
print("== the 60-epoch recipe, same model and batches (test error %: as trained / re-estimated over 5,000 plain images)")
diffs = {}
for l in open(D + 'paired-60.jsonl'):
    r = json.loads(l)
    e = {k: r[k]["recalibrated"] for k in ("normlab", "torch32")}
    cells = "  ".join(f"{k} {100 - 100 * v['test_acc_before']:.1f} / {100 - 100 * v['test_acc_after']:.1f}" for k, v in e.items())
    print(f"seed {r['seed']}, stream {r.get('stream', str(r['seed']))}: {cells}; last train-loss sixth "
          f"{r['loss_windows']['normlab'][-1]:.4f} / {r['loss_windows']['torch32'][-1]:.4f}")
    kind = "train:S" if r.get("stream", "").startswith("train:") else "generator"
    diffs.setdefault(kind, []).append(100 * (e["torch32"]["test_acc_before"] - e["normlab"]["test_acc_before"]))
for kind, v in diffs.items():
    m = ms(v)
    print(f"normlab minus torch32, as trained, streams {kind}: {m[0]:+.2f} ± {m[1]:.2f} points (s.e., n={len(v)}; torch better in {sum(x > 0 for x in v)})")
