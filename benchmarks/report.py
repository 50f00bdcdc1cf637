"""Turns a pytest-benchmark JSON into the tables of benchmarks/RESULTS.md.

    python benchmarks/report.py benchmarks/results/cpu.json [--out benchmarks/RESULTS.md]

Rewrites only the part between the `<!-- cpu:begin -->` and `<!-- cpu:end -->` markers
(other sections, e.g. GPU runs, stay as they are). Times are medians."""
import argparse
import json
import os
import re
from collections import defaultdict

BEGIN, END = "<!-- cpu:begin -->", "<!-- cpu:end -->"


def gflops(b, stat="median"):
    return b["extra_info"]["flops"] / b["stats"][stat] / 1e9


def fmt_s(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(data):
    m = data["machine_info"]
    sc = m.get("simcore", {})
    bench = data["benchmarks"]
    by_kind = defaultdict(list)
    for b in bench:
        by_kind[b["extra_info"].get("kind")].append(b)
    out = [BEGIN, "", "## CPU run", ""]
    out.append(f"- Machine: {sc.get('cpu_model', m.get('cpu', {}).get('brand_raw', '?'))}, "
               f"{sc.get('threads')} threads, kernels `{sc.get('cpu_isa')}`, torch {sc.get('torch')}, "
               f"Python {m.get('python_version')}")
    commit = data.get("commit_info", {})
    out.append(f"- Run: {data.get('datetime', '?')[:19]} UTC, commit {commit.get('id', '?')[:10]}"
               f"{' (dirty)' if commit.get('dirty') else ''}, N = {sc.get('bench_n')}")
    out.append("- Command: `make bench` (all times are medians of the rounds shown)")
    out.append("")

    ceiling = {}  # the fastest round of the fastest implementation: a ceiling, not a median
    out += ["### GEMM ceiling (4096 x 4096 x 4096, same run; the fastest round counts)", "",
            "| dtype | implementation | median | fastest | GFLOP/s (fastest) |", "|---|---|---|---|---|"]
    for b in sorted(by_kind["ceiling"], key=lambda b: (b["extra_info"]["dtype"], b["extra_info"]["impl"])):
        e, g = b["extra_info"], gflops(b, "min")
        ceiling[e["dtype"]] = max(ceiling.get(e["dtype"], 0), g)
        out.append(f"| {e['dtype']} | {e['impl']} | {fmt_s(b['stats']['median'])} | "
                   f"{fmt_s(b['stats']['min'])} | {g:.0f} |")
    out.append("")

    fused = defaultdict(dict)
    for b in by_kind["fused"]:
        e = b["extra_info"]
        fused[(e["d"], e["dtype"])][e["impl"]] = b
    out += ["### Fused pass: masked_topk, k = 100, K = 64, N = %s" % sc.get("bench_n"), "",
            "| d | dtype | simcore | % of ceiling | torch mm+topk | faiss IndexFlatIP | simcore / torch | simcore / faiss |",
            "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for (d, dtype), impls in sorted(fused.items()):
        ours = impls.get("simcore masked_topk")
        if ours is None:
            continue
        g = gflops(ours)
        pct = 100 * g / ceiling[dtype] if dtype in ceiling else float("nan")
        cells = [f"{d}", dtype, f"{g:.0f} GFLOP/s ({fmt_s(ours['stats']['median'])})", f"{pct:.0f}%"]
        ratios = []
        for impl in ("torch chunked mm+topk", "faiss IndexFlatIP (own process)"):
            b = impls.get(impl)
            cells.append(f"{gflops(b):.0f} GFLOP/s" if b else "n/a")
            ratios.append(f"{b['stats']['median'] / ours['stats']['median']:.2f}x" if b else "n/a")
        out.append("| " + " | ".join(cells + ratios) + " |")
        if d >= 512:
            verdicts.append((f"fused pass d={d} {dtype} >= 80% of the {dtype} GEMM ceiling", pct >= 80, f"{pct:.0f}%"))
    out.append("")

    sel = defaultdict(dict)
    for b in by_kind["select"]:
        e = b["extra_info"]
        sel[(e.get("geometry", "spread"), e["n"], e["budget"])][e["impl"]] = b
    out += ["### select_coreset: d = 256, k = 100, integer features, metric dot (identical indices asserted)", "",
            "One pass = masked_topk (K = 64) on the same data, the smaller of two medians of 5 "
            "timed just before and after the selection's rounds. Geometry: *spread* (centroids "
            "and U independent) or *crowded* (a fine-grained target: centroids perturb one point, "
            "1% of U are its relatives, every list must hold about the whole budget). "
            "K: the first pass's list depth, planned from a sample of U.", "",
            "| geometry | N | budget | simcore | x one pass | released sampler | speed-up | full pass per round | speed-up | items | rounds | passes | K |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    n_max = max((key[1] for key in sel), default=0)
    for (geom, n, name), impls in sorted(sel.items(), key=lambda kv: (kv[0][0] != "spread",) + kv[0]):
        if name == "pass":
            continue
        ours = impls.get("simcore select_coreset")
        if ours is None:
            continue
        t = ours["stats"]["median"]
        one = ours["extra_info"].get("one_pass")  # measured next to it, else the pass test
        if one is None and sel[("spread", n, "pass")].get("masked_topk K=64 (one pass)"):
            one = sel[("spread", n, "pass")]["masked_topk K=64 (one pass)"]["stats"]["median"]
        ratio = t / one if one else float("nan")
        rel = next((b for k, b in impls.items() if k.startswith("released")), None)
        naive = next((b for k, b in impls.items() if k.startswith("naive")), None)
        e = ours["extra_info"]
        cells = [geom, str(n), name, fmt_s(t), f"{ratio:.2f}x"]
        if rel:
            mem = rel["extra_info"].get("peak_rss_bytes", 0) / 2**30
            cells += [f"{fmt_s(rel['stats']['median'])} ({mem:.1f} GB)", f"{rel['stats']['median'] / t:.0f}x"]
        else:
            cells += ["", ""]
        cells += [fmt_s(naive["stats"]["median"]), f"{naive['stats']['median'] / t:.0f}x"] if naive else ["", ""]
        cells += [str(e["items"]), str(e["rounds"]), str(e["passes"]), str(e.get("first_candidates", ""))]
        out.append("| " + " | ".join(cells) + " |")
        if geom == "spread" and name == "1%" and n == n_max:
            verdicts.append((f"select at B=1% of N={n} <= 1.5x one pass", ratio <= 1.5, f"{ratio:.2f}x"))
        if geom == "spread" and name == "1%" and rel:
            sp = rel["stats"]["median"] / t
            verdicts.append((f"select at B=1%, N={n} >= 100x the released sampler", sp >= 100, f"{sp:.0f}x"))
        if geom == "crowded" and n == n_max:
            bound = 2.0 if name == "1%" else 3.0
            verdicts.append((f"crowded centroids, B={name}, N={n}: <= {bound:.0f}x one pass",
                             ratio <= bound, f"{ratio:.2f}x, {e['passes']} pass(es)"))
    out.append("")

    if by_kind["memory"]:
        out += ["### Peak memory: select_coreset on a float16 .npy file (k = 100, B = 1%)", "",
                "| N x d | file | given as | chunk | peak RSS above start | time |", "|---|---|---|---|---|---|"]
        for b in sorted(by_kind["memory"], key=lambda b: b["extra_info"]["mode"]):
            e = b["extra_info"]
            out.append(f"| {e['n']} x {e['d']} | {e['n'] * e['d'] * 2 / 2**30:.2f} GB | {e['mode']} | "
                       f"{e['chunk_bytes'] / 2**20:.0f} MB | {e['peak_above_start'] / 2**20:.0f} MB | {fmt_s(e['seconds'])} |")
            if e["mode"] == "path":
                extra = (e["peak_above_start"] - e["chunk_bytes"]) / 2**30
                verdicts.append((f"peak memory on the {e['n']}-row file within 1 GB above one chunk",
                                 extra <= 1.0, f"{e['peak_above_start'] / 2**20:.0f} MB in all"))
        out.append("")

    out += ["### Targets", "", "| target | met | measured |", "|---|---|---|"]
    out += [f"| {name} | {'yes' if ok else '**no**'} | {value} |" for name, ok, value in verdicts]
    out += ["", END]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("json", nargs="+", help="pytest-benchmark JSON files (machine info from the first)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = p.parse_args()
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append(json.load(f))
    data = dict(runs[0], benchmarks=[b for r in runs for b in r["benchmarks"]])
    section = render(data)
    text = open(args.out).read() if os.path.exists(args.out) else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(section)


if __name__ == "__main__":
    main()
