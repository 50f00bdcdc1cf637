"""The GPU benchmark's table (benchmarks/test_gpu.py JSON -> markdown), with the issue's
targets checked against the ceilings measured in the same run.

    python benchmarks/gpu_report.py gpu.json [--out table.md] [--results benchmarks/RESULTS.md]

--results rewrites the part of RESULTS.md between `<!-- gpu:begin -->` and `<!-- gpu:end -->`."""
import argparse
import json
import os
from collections import defaultdict

BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"


def ms(s):
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def render(data):
    bench = data["benchmarks"]
    by = defaultdict(list)
    for b in bench:
        by[b["extra_info"]["kind"]].append(b)
    med = lambda b: b["stats"]["median"]  # noqa: E731
    ceil = {}
    for kind in ("copy", "h2d"):
        if by[kind]:
            ceil[kind] = by[kind][0]["extra_info"]["bytes"] / med(by[kind][0]) / 1e9
    if by["gemm"]:
        ceil["gemm"] = by["gemm"][0]["extra_info"]["flops"] / med(by["gemm"][0]) / 1e12
    any_b = bench[0]["extra_info"]
    sc = data.get("machine_info", {}).get("simcore", {})
    commit = data.get("commit_info", {})
    out = [BEGIN, "", f"## GPU run: {any_b['device']}", ""]
    out.append(f"- Run: {data.get('datetime', '?')[:19]} UTC, commit {commit.get('id', '?')[:10]}"
               f"{' (dirty)' if commit.get('dirty') else ''}, torch {sc.get('torch')}, "
               f"N = {any_b['n']:,} rows, bfloat16, K = 64 unless said")
    out.append("- Command: `benchmarks/gpu_check.sh` (pytest-benchmark, medians)")
    out.append(f"- Measured ceilings: device copy {ceil.get('copy', 0):.0f} GB/s (read + write), "
               f"bf16 GEMM {ceil.get('gemm', 0):.0f} TFLOP/s (torch.mm 8192^3), "
               f"host-to-device {ceil.get('h2d', 0):.1f} GB/s (pinned, 1 GiB)")
    out += ["", "| k | d | simcore | U read GB/s | % copy BW | TFLOP/s | % GEMM | torch mm+topk | speed-up | "
            "streamed from host | GB/s | % H2D |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = defaultdict(dict)
    for b in by["device"] + by["host"]:
        e = b["extra_info"]
        rows[(e["k"], e["d"])][(b["extra_info"]["kind"], e["impl"])] = b
    verdicts = []
    for (k, d), r in sorted(rows.items()):
        ours, torch_b, host = r.get(("device", "simcore")), r.get(("device", "torch")), r.get(("host", "simcore"))
        cells = [str(k), str(d)]
        if ours:
            e = ours["extra_info"]
            gbs, tf = e["bytes"] / med(ours) / 1e9, e["flops"] / med(ours) / 1e12
            bw, gm = 100 * gbs / ceil["copy"], 100 * tf / ceil["gemm"]
            cells += [ms(med(ours)), f"{gbs:.0f}", f"{bw:.0f}%", f"{tf:.0f}", f"{gm:.0f}%"]
        else:
            cells += ["-"] * 5
        if ours and torch_b:
            sp = med(torch_b) / med(ours)
            cells += [ms(med(torch_b)), f"{sp:.1f}x"]
            verdicts.append(f"k={k} d={d}: {sp:.1f}x torch mm+topk (target >= 3x: "
                            f"{'met' if sp >= 3 else 'MISSED'})")
        else:
            cells += ["-", "-"]
        if host:
            gbs = host["extra_info"]["bytes"] / med(host) / 1e9
            share = 100 * gbs / ceil["h2d"]
            cells += [ms(med(host)), f"{gbs:.1f}", f"{share:.0f}%"]
            verdicts.append(f"k={k} d={d} streamed: {share:.0f}% of H2D bandwidth (target >= 80%: "
                            f"{'met' if share >= 80 else 'MISSED'})")
        else:
            cells += ["-"] * 3
        if ours and k == 100 and d == 2048:
            verdicts.append(f"k=100 d=2048: {bw:.0f}% of copy bandwidth (target >= 70%: "
                            f"{'met' if bw >= 70 else 'MISSED'})")
        if ours and k == 1000:
            verdicts.append(f"k=1000 d={d}: {gm:.0f}% of the GEMM rate (target >= 60%: "
                            f"{'met' if gm >= 60 else 'MISSED'})")
        out.append("| " + " | ".join(cells) + " |")
    if by["sweep"]:
        out += ["", "K and tile width (k = 100, d = 2048, on the device):", "",
                "| K | tile rows | time | U read GB/s |", "|---|---|---|---|"]
        for b in sorted(by["sweep"], key=lambda b: (b["extra_info"]["K"], b["extra_info"]["impl"])):
            e = b["extra_info"]
            out.append(f"| {e['K']} | {e['impl'].split()[-1]} | {ms(med(b))} | {e['bytes'] / med(b) / 1e9:.0f} |")
    for b in by["select"]:
        e = b["extra_info"]
        one = rows.get((e["k"], e["d"]), {}).get(("device", "simcore"))
        rel = f", {med(b) / med(one):.2f}x one masked_topk pass" if one else ""
        out += ["", f"select_coreset on the device (k = {e['k']}, d = {e['d']}, cosine, budget 1%, "
                f"no stop criterion): {ms(med(b))} ({e.get('rounds')} rounds, {e.get('passes')} passes, "
                f"first pass {ms(e.get('first_pass_s', 0))}{rel})."]
    out += ["", "Targets:", ""] + [f"- {v}" for v in verdicts] + ["", END]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--out")
    ap.add_argument("--results")
    args = ap.parse_args()
    with open(args.json) as f:
        table = render(json.load(f))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.results:
        with open(args.results) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
        tmp = args.results + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.results)


if __name__ == "__main__":
    main()
