#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Turn one benchmark run into results JSON, Markdown tables and gnuplot plots.

usage: report.py META.json RESULTS.jsonl OUTDIR BENCHMARKS.md

Writes OUTDIR/results-STAMP.json (meta + every record + the derived ratios and targets),
OUTDIR/depth-randread-iops.png, OUTDIR/depth-seqread-mibs.png, OUTDIR/depth-cpu.png (if gnuplot
is installed), and replaces the part of BENCHMARKS.md between the markers
<!-- bench:begin --> and <!-- bench:end --> (creating the file or the markers if missing); the
hand-written analysis outside the markers is kept.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CC = "cc-uring"  # the plugin's default I/O mode; targets are judged on it


def fmt(v, nd=0):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if nd == 0:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def rx(v):
    return "–" if v is None else f"{v:.2f}x"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main():
    meta_path, res_path, outdir, md_path = sys.argv[1:5]
    meta = json.load(open(meta_path))
    recs = [json.loads(line) for line in open(res_path) if line.strip()]
    stamp = meta["stamp"]
    os.makedirs(outdir, exist_ok=True)

    def get(section, **kw):
        """The matching record; for fio records measured in several rounds, the best one."""
        ms = [r for r in recs
              if r.get("section") == section and all(r.get(k) == v for k, v in kw.items())]
        if not ms:
            return None
        if "iops" in ms[0]:
            return max(ms, key=lambda r: r["iops"] or 0)
        return ms[0]

    def val(section, field, **kw):
        r = get(section, **kw)
        return None if r is None else r.get(field)

    md = []
    m = meta["machine"]
    v = meta["versions"]
    cfg = meta["config"]
    md.append(f"Run **{meta['date']}** ({meta['mode']} mode, {meta.get('elapsed_s', '?')} s, "
              f"sections: {', '.join(meta['sections'])}), cowchain commit `{meta['commit']}`"
              + (f" plus {meta['dirty_files']} uncommitted file(s) in chain/ overlay/ server/ cli/ "
                 "common/ (work in progress by others)" if meta.get("dirty_files") else "") + ".")
    md.append("")
    md.append(table(["machine", "value"], [
        ["nproc", m["nproc"]], ["CPU", m["cpu"]], ["memory", m["memory"]], ["kernel", m["kernel"]],
        ["nbdkit", v["nbdkit"]], ["qemu (qemu-img/qemu-nbd/qemu-io)", v["qemu"]],
        ["fio", v["fio"]], ["liburing", v["liburing"]], ["libnbd", v["libnbd"]],
        ["load average at start / end", f"{meta['loadavg_start']} / {meta.get('loadavg_end', '?')}"],
    ]))
    try:
        loads = [float(meta["loadavg_start"].split()[0]), float(meta.get("loadavg_end", "0").split()[0])]
    except ValueError:
        loads = [0.0]
    if max(loads) > 0.5 * m["nproc"]:
        md.append("")
        md.append(f"**The machine was shared while measuring** (load average up to {max(loads):.1f} "
                  f"on {m['nproc']} CPUs from other work): single numbers are noisy; read the "
                  "ratios and the CPU-per-I/O columns.")
    md.append("")
    b = get("build")
    if b:
        md.append(f"Template {b['template_bytes'] >> 20} MiB of pseudo-random data; "
                  f"{b['max_depth']} layers of {b['clusters_per_layer']} clusters of "
                  f"{b['cluster'] >> 10} KiB each (1%, seeded); qcow2 chain built in "
                  f"{b['qcow2_build_s']:.1f} s{' (cached from an earlier run)' if b.get('qcow2_cached') else ''}, "
                  f"cowchain chain in {b['cowchain_build_s']:.1f} s (builder: "
                  f"{'scripts/bench/mkchain.c through chain/' if b.get('cowchain_builder') == 'lib' else 'captive nbdkit + qemu-io, then cowchain snapshot create, per layer'}); "
                  f"cowchain c{b['max_depth']} and qcow2 top{b['max_depth']} read back identical "
                  f"(`qemu-img compare`): **{'yes' if b['chains_identical'] else 'NO'}**.")
        md.append("")
    md.append(f"fio: {cfg['runtime_s']} s per measured run, a {cfg['warmup_s']} s warm-up run before "
              "each server's first workload; depth series: best of "
              f"{cfg.get('rounds', 1)} round(s), peers in alternating order; "
              "one job over one NBD connection (`--ioengine=nbd`), warm page cache; randread = 4 KiB "
              "iodepth 32, seqread = 1 MiB iodepth 8. CPU/IO = server user+system CPU "
              "(/proc/PID/stat) during the measured run divided by the I/Os it completed.")
    md.append("")

    derived = {}
    depths = cfg["depths"]
    have_depth = any(r.get("section") == "depth" for r in recs)
    if have_depth:
        for wl, field, unit in (("randread", "iops", "IOPS"), ("seqread", "mib_s", "MiB/s")):
            file_v = val("depth", field, peer="nbd-file", workload=wl)
            cc1 = val("depth", field, peer=CC, depth=depths[0], workload=wl)
            rows = []
            for d in depths:
                u = val("depth", field, peer="cc-uring", depth=d, workload=wl)
                s = val("depth", field, peer="cc-sync", depth=d, workload=wl)
                q = val("depth", field, peer="qemu-nbd", depth=d, workload=wl)
                cu = val("depth", "cpu_us_per_io", peer="cc-uring", depth=d, workload=wl)
                cs = val("depth", "cpu_us_per_io", peer="cc-sync", depth=d, workload=wl)
                cq = val("depth", "cpu_us_per_io", peer="qemu-nbd", depth=d, workload=wl)
                fc = val("depth", "client_cpu_us_per_io", peer="cc-uring", depth=d, workload=wl)
                rows.append([d, fmt(u), fmt(s), fmt(q), rx(ratio(u, q)), rx(ratio(u, cc1)),
                             rx(ratio(u, s)), f"{fmt(cu, 1)} / {fmt(cs, 1)} / {fmt(cq, 1)}",
                             fmt(fc, 1)])
                derived.setdefault(wl, {})[str(d)] = {
                    "cc_over_qemu": ratio(u, q), "cc_over_cc1": ratio(u, cc1),
                    "uring_over_sync": ratio(u, s), "cc_over_file": ratio(u, file_v)}
            cf = val("depth", "cpu_us_per_io", peer="nbd-file", workload=wl)
            md.append(f"**{wl}** ({unit}; nbdkit file plugin on the raw template: "
                      f"**{fmt(file_v)}** {unit}, {fmt(cf, 1)} µs CPU/IO; cowchain depth "
                      f"{depths[0]} / file = {rx(ratio(cc1, file_v))})")
            md.append("")
            md.append(table(["depth", "cowchain io=uring", "cowchain io=sync", "qemu-nbd qcow2",
                             "cowchain/qemu-nbd", "cowchain(D)/cowchain(1)", "uring/sync",
                             "server CPU µs/IO uring / sync / qemu-nbd",
                             "fio CPU µs/IO (uring run)"], rows))
            md.append("")
        if shutil.which("gnuplot"):
            plot(recs, depths, outdir)
            rel = os.path.relpath(outdir, os.path.dirname(os.path.abspath(md_path)))
            md.append(f"![4 KiB random read IOPS against chain depth]({rel}/depth-randread-iops.png)")
            md.append(f"![1 MiB sequential read MiB/s against chain depth]({rel}/depth-seqread-mibs.png)")
            md.append(f"![server CPU per I/O against chain depth]({rel}/depth-cpu.png)")
            md.append("")

    if any(r.get("section") == "writes" for r in recs):
        rows = []
        qd = {wl: val("writes", "iops", peer="qemu-nbd", workload=wl)
              for wl in ("firstwrite", "randwrite")}
        for peer, label in (("cc-uring", "cowchain io=uring (fresh clone)"),
                            ("cc-sync", "cowchain io=sync (fresh clone)"),
                            ("qemu-nbd", "qemu-nbd, qcow2 default (64 KiB clusters)"),
                            ("qemu-nbd-el2", "qemu-nbd, qcow2 extended_l2=on (64 KiB)"),
                            ("qemu-nbd-el2-128k", "qemu-nbd, qcow2 extended_l2=on, 128 KiB"),
                            ("nbd-file", "nbdkit file, raw copy (ceiling)")):
            fw = get("writes", peer=peer, workload="firstwrite")
            rw = get("writes", peer=peer, workload="randwrite")
            rows.append([label,
                         fmt(fw and fw["iops"]), rx(ratio(fw and fw["iops"], qd["firstwrite"])),
                         fmt(fw and fw["cpu_us_per_io"], 1),
                         fmt(rw and rw["iops"]), rx(ratio(rw and rw["iops"], qd["randwrite"])),
                         fmt(rw and rw["cpu_us_per_io"], 1)])
        md.append("**Writes** (4 KiB, iodepth 32, each into a fresh clone/overlay, ending with a "
                  "flush (fio end_fsync, not counted in fio's IOPS); first writes = one write per "
                  "128 KiB cluster over the whole disk, sequential, every one a would-be copy-up; "
                  "random writes time-based; best of the rounds)")
        md.append("")
        md.append(table(["peer", "first writes IOPS", "vs qemu-nbd default", "CPU µs/IO",
                         "random writes IOPS", "vs qemu-nbd default", "CPU µs/IO"], rows))
        md.append("")

    if any(r.get("section") == "clients" for r in recs):
        rows = []
        qv = val("clients", "iops", peer="qemu-nbd")
        for peer, label in (("cc-uring", "cowchain io=uring, one nbdkit"),
                            ("cc-sync", "cowchain io=sync, one nbdkit"),
                            ("qemu-nbd", "qemu-nbd, one process per overlay"),
                            ("nbd-file", "nbdkit file, one file (ceiling)")):
            r = get("clients", peer=peer)
            if r:
                rows.append([label, fmt(r["iops"]), rx(ratio(r["iops"], qv)),
                             fmt(r["cpu_us_per_io"], 1)])
        md.append(f"**Many clients**: {cfg['clients']} fio jobs at once, each on its own clone of "
                  "the template over its own connection, 4 KiB random reads iodepth 32 each")
        md.append("")
        md.append(table(["peer", "aggregate IOPS", "vs qemu-nbd", "server CPU µs/IO"], rows))
        md.append("")

    if any(r.get("section") == "ops" for r in recs):
        rows = []
        for r in recs:
            if r.get("section") != "ops":
                continue
            rows.append([r["op"], r["peer"], r["depth"], r["n"], fmt(r["median_ms"], 1),
                         f"{fmt(r['min_ms'], 1)}–{fmt(r['max_ms'], 1)}",
                         fmt(r.get("mib_s"), 0) if r.get("mib_s") else "–"])
        md.append(f"**Operations** (whole commands, wall time; snapshot-create runs "
                  f"{cfg['ops_n']} snapshots in a row on one clone, so depth D means D+1..D+"
                  f"{cfg['ops_n']}; merge = snapshot delete of a layer of "
                  "template/8 bytes into its child, vs `qemu-img rebase` of the child; open-1T = "
                  "`nbdinfo --size` on a clone of a 1 TiB empty template; open-deep = the same on "
                  "the depth-D clone, where every new nbdkit connection opens the chain, while "
                  "qemu-nbd opens it once at start, so its number includes the server start)")
        md.append("")
        md.append(table(["operation", "tool", "depth", "n", "median ms", "min–max ms",
                         "MiB/s"], rows))
        md.append("")

    if any(r.get("section") == "memory" for r in recs):
        rows = []
        for r in recs:
            if r.get("section") == "memory" and r["kind"] in ("idle", "clones"):
                rows.append([r["peer"], r["clones"], fmt(r["rss_kb"] / 1024, 1),
                             fmt(r["hwm_kb"] / 1024, 1), fmt(r.get("pss_kb", 0) / 1024, 1),
                             r["threads"]])
        md.append(f"**Memory**: one nbdkit (cowchain, io=uring) serving N clones of one template "
                  f"with a {cfg['history']}-snapshot shared history, all N connections open at "
                  "once (holdconns); peer: N qemu-nbd processes (summed)")
        md.append("")
        md.append(table(["server", "clones", "VmRSS MiB", "VmHWM MiB",
                         "PSS MiB (shared pages counted once)", "threads"], rows))
        md.append("")
        for peer in ("cowchain", "qemu-nbd"):
            base = get("memory", peer=peer, kind="per-cluster-base")
            deep = get("memory", peer=peer, kind="per-cluster-deep")
            if base and deep and deep.get("extra"):
                bpc = (deep["rss_kb"] - base["rss_kb"]) * 1024 / deep["extra"]
                derived.setdefault("memory", {})[peer + "_bytes_per_cluster"] = bpc
                md.append(f"- {peer}: {fmt(bpc)} bytes of RSS per allocated cluster "
                          f"(depth {cfg['depths'][-1]}: {deep['extra']} clusters, "
                          f"{deep['rss_kb'] / 1024:.1f} MiB vs {base['rss_kb'] / 1024:.1f} MiB "
                          "on a clone with no layers, one client that read every cluster)")
        c1 = get("memory", peer="cowchain", kind="clones", clones=1)
        cn = [r for r in recs if r.get("section") == "memory" and r.get("peer") == "cowchain"
              and r.get("kind") == "clones"]
        if c1 and len(cn) > 1:
            last = max(cn, key=lambda r: r["clones"])
            per = (last["rss_kb"] - c1["rss_kb"]) / max(1, last["clones"] - 1)
            md.append(f"- cowchain: {per / 1024:.2f} MiB per extra open clone+connection "
                      f"({last['clones']} vs 1)")
        q1 = get("memory", peer="qemu-nbd", kind="clones", clones=1)
        if q1:
            md.append(f"- qemu-nbd: {q1['rss_kb'] / 1024:.2f} MiB per process")
        md.append("")

    if any(r.get("section") in ("ablation", "ablation-syscalls") for r in recs):
        rows = []
        for d in cfg.get("ablation_depths", []):
            for wl in ("randread", "seqread"):
                for mode in ("uring", "sync"):
                    a = get("ablation", peer="cc-" + mode, workload=wl, depth=d)
                    sc = get("ablation-syscalls", peer="cc-" + mode, workload=wl, depth=d)
                    per = None
                    if a and sc and a["iops"]:
                        per = sc["syscalls"] / sc["seconds"] / a["iops"]
                    rows.append([d, wl, "io=" + mode, fmt(a and a["iops"]),
                                 fmt(a and a["mib_s"], 1), fmt(per, 2),
                                 f"bench/perf-{wl}-{mode}-d{d}.txt"])
        md.append("**io_uring ablation** (one more run per mode with the server under `perf stat` "
                  "(syscalls/IO = raw_syscalls:sys_enter of the server over the I/Os fio "
                  "completed) and one under `perf record -g` (profiles in docs/bench/))")
        md.append("")
        md.append(table(["depth", "workload", "mode", "IOPS", "MiB/s", "server syscalls/IO",
                         "profile"], rows))
        md.append("")
        abl = []
        for wl in ("randread", "seqread"):
            for d in depths:
                rr = derived.get(wl, {}).get(str(d), {}).get("uring_over_sync")
                if rr is not None:
                    abl.append(rr)
        if abl:
            md.append(f"uring/sync over all depth-series runs (both workloads, all depths): "
                      f"min {min(abl):.2f}x, max {max(abl):.2f}x, geometric mean "
                      f"{math.prod(abl) ** (1 / len(abl)):.2f}x.")
            md.append("")

    # Targets.
    # Targets: (name, ratio, goal, supporting text).  "Supporting" is the same comparison in
    # server CPU per I/O (inverse), which a busy shared machine disturbs far less than IOPS.
    targets = []
    deep = 64 if 64 in depths else depths[-1]

    def cpu(section, **kw):
        return val(section, "cpu_us_per_io", **kw)

    def cpu_note(a, b, what):
        r = ratio(a, b)
        return "–" if r is None else f"{r:.2f}x ({what}: {fmt(a, 1)} vs {fmt(b, 1)} µs)"

    if have_depth:
        for wl in ("randread", "seqread"):
            r = derived[wl].get(str(deep), {}).get("cc_over_cc1")
            targets.append((f"depth {deep} >= 0.95x depth {depths[0]} ({wl})", r, 0.95,
                            cpu_note(cpu("depth", peer=CC, depth=depths[0], workload=wl),
                                     cpu("depth", peer=CC, depth=deep, workload=wl),
                                     f"CPU/IO d{depths[0]} vs d{deep}")))
        r = ratio(val("depth", "iops", peer=CC, depth=depths[0], workload="randread"),
                  val("depth", "iops", peer="nbd-file", workload="randread"))
        targets.append((f"depth-{depths[0]} random read >= 0.9x nbdkit file", r, 0.9,
                        cpu_note(cpu("depth", peer="nbd-file", workload="randread"),
                                 cpu("depth", peer=CC, depth=depths[0], workload="randread"),
                                 "CPU/IO file vs cowchain")))
        targets.append((f">= 5x qemu-nbd at depth {deep}, 4 KiB random reads",
                        derived["randread"].get(str(deep), {}).get("cc_over_qemu"), 5.0,
                        cpu_note(cpu("depth", peer="qemu-nbd", depth=deep, workload="randread"),
                                 cpu("depth", peer=CC, depth=deep, workload="randread"),
                                 "CPU/IO qemu-nbd vs cowchain")))
    if any(r.get("section") == "writes" for r in recs):
        targets.append((">= 4x qemu-nbd default qcow2 on 4 KiB first writes",
                        ratio(val("writes", "iops", peer=CC, workload="firstwrite"),
                              val("writes", "iops", peer="qemu-nbd", workload="firstwrite")), 4.0,
                        cpu_note(cpu("writes", peer="qemu-nbd", workload="firstwrite"),
                                 cpu("writes", peer=CC, workload="firstwrite"),
                                 "CPU/IO qemu-nbd vs cowchain")))
    od = cfg["ops_deep"]
    c1 = get("ops", op="clone-create", peer="cowchain", depth=1)
    cd = get("ops", op="clone-create", peer="cowchain", depth=od)
    if c1 and cd:
        # flat = the deep clone takes at most 1.2x the time of the shallow one (inverse ratio);
        # judged on the fastest of n (a command's time only grows with interference)
        q1 = get("ops", op="clone-create", peer="qemu-img", depth=1)
        qd = get("ops", op="clone-create", peer="qemu-img", depth=od)
        targets.append((f"linked clone creation flat in depth: fastest of {c1['n']} at d1 / "
                        f"at d{od} >= 0.83 (<= 1.2x slower)", ratio(c1["min_ms"], cd["min_ms"]),
                        1 / 1.2,
                        f"medians {fmt(c1['median_ms'], 1)} / {fmt(cd['median_ms'], 1)} ms; "
                        + (f"qemu-img create -b: {fmt(q1['min_ms'], 1)} / {fmt(qd['min_ms'], 1)} ms"
                           if q1 and qd else "")))
    if targets:
        rows = []
        for name, r, goal, sup in targets:
            if r is None:
                rows.append([name, "–", "not measured", sup])
            else:
                met = r >= goal
                rows.append([name, f"{r:.2f}x", ("**met**" if met else "**missed**") +
                             f" ({(r / goal - 1) * 100:+.0f}% vs target)", sup])
            derived.setdefault("targets", {})[name] = {"ratio": r, "goal": goal,
                                                      "met": None if r is None else r >= goal,
                                                      "supporting": sup}
        md.insert(0, "")
        md.insert(0, table(["target (cowchain io=uring unless stated)", "measured", "result",
                            "same comparison in server CPU per I/O"], rows))
        md.insert(0, "**Targets** (ratios from this run)\n")

    out = {"meta": meta, "records": recs, "derived": derived}
    json_path = os.path.join(outdir, f"results-{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    gen = "\n".join([BEGIN, f"<!-- generated by scripts/bench/run ({os.path.basename(json_path)});"
                     " edits inside these markers are overwritten -->", ""] + md + [END])
    if os.path.exists(md_path):
        text = open(md_path).read()
    else:
        text = "# cowchain benchmarks\n\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + gen + post
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + gen + "\n"
    with open(md_path, "w") as f:
        f.write(text)


def best(recs, section, peer, wl, depth=None):
    """The best of the rounds (as in the tables)."""
    ms = [r for r in recs if r.get("section") == section and r["peer"] == peer
          and r["workload"] == wl and (depth is None or r["depth"] == depth)]
    return max(ms, key=lambda r: r["iops"] or 0) if ms else None


def plot(recs, depths, outdir):
    tmp = tempfile.mkdtemp()
    peers = [("cc-uring", "cowchain io=uring"), ("cc-sync", "cowchain io=sync"),
             ("qemu-nbd", "qemu-nbd (qcow2 chain)")]
    files = {}
    for wl in ("randread", "seqread"):
        for p, _ in peers:
            path = os.path.join(tmp, f"{wl}-{p}.dat")
            with open(path, "w") as f:
                for d in depths:
                    r = best(recs, "depth", p, wl, d)
                    if r:
                        f.write(f"{d} {r['iops']} {r['mib_s']} {r['cpu_us_per_io'] or 0}\n")
            files[(wl, p)] = path
    fileval = {wl: best(recs, "depth", "nbd-file", wl) for wl in ("randread", "seqread")}
    gp = [
        "set terminal pngcairo size 900,540 font ',10'",
        "set logscale x 2", "set xlabel 'chain depth (layers)'", "set grid",
        "set key outside right top", f"set xrange [{depths[0] * 0.8}:{depths[-1] * 1.25}]",
        "set yrange [0:*]",
    ]
    for wl, col, ylabel, name, title in (
            ("randread", 2, "IOPS", "depth-randread-iops.png", "4 KiB random read, iodepth 32"),
            ("seqread", 3, "MiB/s", "depth-seqread-mibs.png", "1 MiB sequential read, iodepth 8")):
        gp.append(f"set output '{os.path.join(outdir, name)}'")
        gp.append(f"set ylabel '{ylabel}'")
        gp.append(f"set title '{title} (one NBD connection)'")
        parts = [f"'{files[(wl, p)]}' using 1:{col} with linespoints lw 2 title '{t}'"
                 for p, t in peers]
        fv = fileval[wl]
        if fv:
            parts.append(f"{fv['iops'] if col == 2 else fv['mib_s']} with lines dt 2 lw 2 "
                         "title 'nbdkit file, raw template'")
        gp.append("plot " + ", ".join(parts))
    gp.append(f"set output '{os.path.join(outdir, 'depth-cpu.png')}'")
    gp.append("set logscale y 10")
    gp.append("set yrange [*:*]")
    gp.append("set ylabel 'server CPU µs per I/O (log scale)'")
    gp.append("set title 'server CPU per I/O (user+system), 4 KiB random read'")
    parts = [f"'{files[('randread', p)]}' using 1:4 with linespoints lw 2 title '{t}'"
             for p, t in peers]
    fv = fileval["randread"]
    if fv and fv.get("cpu_us_per_io"):
        parts.append(f"{fv['cpu_us_per_io']} with lines dt 2 lw 2 title 'nbdkit file'")
    gp.append("plot " + ", ".join(parts))
    script = os.path.join(tmp, "plot.gp")
    with open(script, "w") as f:
        f.write("\n".join(gp) + "\n")
    subprocess.run(["timeout", "60", "gnuplot", script], check=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
