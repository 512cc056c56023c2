"""Benchmark: the 3-epoch preference build at ED scale against a bare pandas.read_csv.

Generates a synthetic corpus in the raw ED layout (default ~19.5k train dialogues, ~85k train
utterances), then, alternating in one process so both see the same machine load:
  (a) pandas.read_csv(train.csv, on_bad_lines="skip")    -- the floor: just parsing the file
  (b) load + clean + pair + write: empo.data.ed.load_dialogues -> emotion table ->
      empo.data.preference.write_preference_jsonl (3 epochs, balanced) to a new JSONL file
Reports the best and median wall time of N repeats, the median of the N paired ratios (b_i/a_i,
the verdict: robust when other jobs share the machine) and the CPU time of all threads, then
the peak RSS of a fresh process
doing (b) once (getrusage ru_maxrss of a child: interpreter + libraries + data), and the wall
time of the real command `empo data preference` in a fresh process (startup included).

    python bench/data_build.py [--repeats 7] [--per-emotion 610] [--keep DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 5.0
GOAL_RSS_MIB = 1024.0

CHILD = """
import resource, sys, time
from empo.data.ed import load_dialogues
from empo.data.emotions import default_table_path, load_table
from empo.data.preference import write_preference_jsonl
start = time.perf_counter()
result = load_dialogues(sys.argv[1], "train")
rows = write_preference_jsonl(sys.argv[2], result.columns, load_table(default_table_path()), 3, 0)
print(rows, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def build_once(corpus: Path, out: Path) -> int:
    from empo.data.ed import load_dialogues
    from empo.data.emotions import default_table_path, load_table
    from empo.data.preference import write_preference_jsonl

    result = load_dialogues(str(corpus), "train")
    return write_preference_jsonl(out, result.columns, load_table(default_table_path()), 3, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-emotion", type=int, default=610,
                        help="train dialogues per emotion (32 emotions; 610 -> 19,520)")
    parser.add_argument("--keep", type=Path, default=None, help="write the corpus here and keep it")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    import pandas as pd

    import empo.data.preference  # noqa: F401 - import cost is not part of (b)
    import empo.data.raw  # noqa: F401
    from empo.data.synthetic import write_ed_corpus

    work = Path(tempfile.mkdtemp(prefix="empo-bench-"))
    corpus = args.keep or work / "ed"
    load_before = os.getloadavg()
    start = time.perf_counter()
    summary = write_ed_corpus(corpus, {"train": args.per_emotion, "valid": args.per_emotion // 7,
                                       "test": args.per_emotion // 7}, seed=0)
    generate_s = time.perf_counter() - start
    train = corpus / "train.csv"

    times_a, times_b, cpu_a, cpu_b, rows = [], [], [], [], 0
    for i in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        frame = pd.read_csv(train, on_bad_lines="skip")
        times_a.append(time.perf_counter() - start)
        cpu_a.append(time.process_time() - cpu)
        del frame
        out = work / f"preference-{i}.jsonl"
        start, cpu = time.perf_counter(), time.process_time()
        rows = build_once(corpus, out)
        times_b.append(time.perf_counter() - start)
        cpu_b.append(time.process_time() - cpu)
        out_bytes = out.stat().st_size
        out.unlink()

    child = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(work / "child.jsonl")],
                           capture_output=True, text=True, check=True).stdout.split()
    peak_rss_mib = int(child[2]) / 1024  # Linux ru_maxrss is in KiB
    start = time.perf_counter()
    subprocess.run(["empo", "data", "preference", "--source", str(corpus), "--split", "train",
                    "--epochs", "3", "--seed", "0", "--out", str(work / "cli.jsonl")],
                   capture_output=True, check=True)
    cli_s = time.perf_counter() - start
    same = (work / "cli.jsonl").read_bytes() == (work / "child.jsonl").read_bytes()

    import numpy
    import pyarrow

    best_a, best_b = min(times_a), min(times_b)
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    paired = statistics.median(b / a for a, b in zip(times_a, times_b))
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "pandas": pd.__version__,
                    "pyarrow": pyarrow.__version__, "numpy": numpy.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "corpus": {**summary, "train_csv_bytes": train.stat().st_size,
                   "generate_s": round(generate_s, 3)},
        "repeats": args.repeats,
        "a_pandas_read_csv_s": {"best": round(best_a, 4), "median": round(med_a, 4)},
        "b_preference_build_s": {"best": round(best_b, 4), "median": round(med_b, 4)},
        "ratio_paired_median": round(paired, 2), "ratio_best": round(best_b / best_a, 2),
        "ratio_median": round(med_b / med_a, 2),
        "cpu_s": {"a_best": round(min(cpu_a), 4), "b_best": round(min(cpu_b), 4),
                  "ratio_best": round(min(cpu_b) / min(cpu_a), 2)},
        "rows": rows, "output_bytes": out_bytes,
        "peak_rss_mib_fresh_process": round(peak_rss_mib, 1),
        "cli_wall_s_fresh_process": round(cli_s, 3), "cli_output_identical": same,
        "goal": {"ratio_le": GOAL_RATIO, "peak_rss_mib_le": GOAL_RSS_MIB,
                 "met": paired <= GOAL_RATIO and peak_rss_mib <= GOAL_RSS_MIB},
    }
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, pandas "
              f"{m['pandas']}, pyarrow {m['pyarrow']}; load average {m['loadavg_before'][0]:.2f}"
              f" -> {m['loadavg_after'][0]:.2f}")
        t, size = summary["train"], report["corpus"]["train_csv_bytes"] / 1e6
        print(f"corpus: {t['dialogues']} train dialogues, {t['utterances']} utterances, "
              f"{t['malformed']} malformed rows, {size:.1f} MB; generated in {generate_s:.2f} s")
        print(f"(a) pandas.read_csv(train.csv):   best {best_a:.3f} s  median {med_a:.3f} s")
        print(f"(b) 3-epoch preference build:     best {best_b:.3f} s  median {med_b:.3f} s  "
              f"({rows} rows, {out_bytes / 1e6:.1f} MB)")
        print(f"(b)/(a): median of paired runs {report['ratio_paired_median']} (goal <= "
              f"{GOAL_RATIO}); best/best {report['ratio_best']}, median/median "
              f"{report['ratio_median']}")
        c = report["cpu_s"]
        print(f"CPU time (all threads): (a) {c['a_best']:.3f} s  (b) {c['b_best']:.3f} s  "
              f"ratio {c['ratio_best']}")
        print(f"peak RSS of a fresh process doing (b): {peak_rss_mib:.0f} MiB (goal <= "
              f"{GOAL_RSS_MIB:.0f})")
        print(f"`empo data preference` in a fresh process: {cli_s:.2f} s wall (startup included);"
              f" output identical: {same}")
        print("goal met" if report["goal"]["met"] else "goal NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
