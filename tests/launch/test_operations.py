"""Operations (issue 15) without a cluster: readable job logs, the status row's job facts from
sacct/squeue text, the exception line of a failed job, cost per stage and its total, `empo logs`,
`empo plan`'s GPU-hours estimate, the tracking arguments."""
from __future__ import annotations

import csv
import io
import json

from launchutil import finish_stage, manifest_jobs

from empo.cli import main
from empo.joblog import PlainLines
from empo.launch.accounting import JobInfo, exception_line, parse_sacct, parse_squeue
from empo.launch.cost import add_costs, write_cost
from empo.launch.status import render, stage_statuses
from empo.pipeline import build_graph


def test_progress_bars_become_periodic_plain_lines_and_repeated_warnings_appear_once():
    out = io.StringIO()
    stream = PlainLines(out, interval_s=3600)
    for step in range(1, 101):
        stream.write(f"\r 'train': {step}%|###| {step}/100")
    stream.write("\n")
    for _ in range(18):
        stream.write("2026-01-01 10:00:01,123 WARNING transformers: `torch_dtype` is deprecated\n")
        stream.write("/x/y.py:12: UserWarning: padding side left\n  warnings.warn(\n")
    stream.write("done\n")
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [" 'train': 1%|###| 1/100", " 'train': 100%|###| 100/100",
                                 "2026-01-01 10:00:01,123 WARNING transformers: `torch_dtype` is "
                                 "deprecated", "/x/y.py:12: UserWarning: padding side left",
                                 "  warnings.warn(", "done"]


def test_sacct_rows_give_elapsed_over_attempts_requeues_gpus_and_exit_code():
    text = ("7_0|REQUEUED|100|node1|0:0|None|billing=4,cpu=4,gres/gpu=2,node=1|4\n"
            "7_0|OUT_OF_MEMORY|50|node2|0:125|None|billing=4,cpu=4,gres/gpu=2,node=1|4\n"
            "8|PENDING|0|None assigned|0:0|Dependency||1\n")
    info = parse_sacct(text)
    assert info["7_0"].elapsed_s == 150 and info["7_0"].requeues == 1
    assert (info["7_0"].gpus, info["7_0"].cpus, info["7_0"].nodes) == (2, 4, "node2")
    assert info["7_0"].state == "OUT_OF_MEMORY" and info["7_0"].exit_code == "0:125"
    assert info["8"].reason == "Dependency" and info["8"].nodes == ""
    live = parse_squeue("9_1|PENDING|Resources|0:00||2|gres/gpu:2\n10|RUNNING|None|1-01:02:03|n3|8|N/A")
    assert live["9_1"].reason == "Resources" and live["9_1"].gpus == 2
    assert live["10"].elapsed_s == 86400 + 3723 and live["10"].nodes == "n3"


def test_the_exception_line_is_the_last_line_of_the_last_traceback(tmp_path):
    log = tmp_path / "1_0_log.err"
    log.write_text("INFO starting\n\rprogress 1%\rprogress 2%\nTraceback (most recent call last):\n"
                   '  File "a.py", line 1, in <module>\n    f()\n    ^^^\n'
                   "ValueError: first\n\nThe above exception was the direct cause of the following "
                   "exception:\n\nTraceback (most recent call last):\n  File \"b.py\", line 2\n"
                   "empo.pipeline.StageError: 1 stage(s) failed (sft/sft/seed-1: ValueError: first)\n"
                   "srun: error: node1: task 0: Exited with exit code 1\n")
    assert exception_line(log) == ("empo.pipeline.StageError: 1 stage(s) failed "
                                   "(sft/sft/seed-1: ValueError: first)")
    assert exception_line(tmp_path / "missing.err") == "" and exception_line(None) == ""


def test_the_exception_line_reads_every_ranks_log_whatever_the_prefix(tmp_path):
    interleaved = tmp_path / "job.out"  # one log of srun's tasks: rank 1 failed first
    interleaved.write_text(
        "[rank1]: Traceback (most recent call last):\n[rank1]:   File \"t.py\", line 3\n"
        "[rank0]: Traceback (most recent call last):\n[rank1]:     raise ValueError('boom')\n"
        "[rank1]: ValueError: boom\n[rank0]:   File \"t.py\", line 9\n"
        "[rank0]: RuntimeError: Connection closed by peer\nE1207 agent: failed\n"
        "Traceback (most recent call last):\n  File \"torchrun\"\nChildFailedError: t.py FAILED\n")
    assert exception_line(interleaved) == "[rank 1] ValueError: boom"
    rank0, rank1 = tmp_path / "7_0_log.err", tmp_path / "7_1_log.err"  # submitit: one per task
    rank0.write_text("INFO loading\n")
    rank1.write_text("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x\"\n"
                     "[rank1]: KeyError: 'input_ids'\n")
    assert exception_line(rank0) == "[rank 1] KeyError: 'input_ids'"


def test_sacct_array_range_records_stand_for_each_task_that_never_started():
    text = ("41_0|COMPLETED|12|n1|0:0|None|cpu=2|2\n"
            "41_[1-2,4%2]|CANCELLED by 0|0|None assigned|0:0|None||0\n")
    info = parse_sacct(text)
    assert sorted(info) == ["41_0", "41_1", "41_2", "41_4"]
    assert {info[t].state for t in ("41_1", "41_2", "41_4")} == {"CANCELLED by 0"}
    assert info["41_0"].elapsed_s == 12.0 and info["41_1"].elapsed_s == 0.0


def test_a_status_row_says_why_a_job_waits_how_a_job_failed_and_what_blocks_the_rest(make_cfg):
    graph = build_graph(make_cfg(seeds=[1]))
    jobs = manifest_jobs(graph)
    sft = jobs["sft/sft/seed-1"]["job_id"]
    generate = jobs["generate/baseline/seed-1"]["job_id"]
    jobs["sft/sft/seed-1"]["error"] = "torch.OutOfMemoryError: CUDA out of memory"
    states = {e["job_id"]: "PENDING" for e in jobs.values()}
    states[sft] = "OUT_OF_MEMORY"
    details = {sft: JobInfo(sft, "OUT_OF_MEMORY", 3725.0, "gpu1", 2, "0:125", cpus=8, gpus=2),
               generate: JobInfo(generate, "PENDING", reason="Resources")}
    status = {s.key: s for s in stage_statuses(graph, jobs, states, details)}
    failed = status["sft/sft/seed-1"]
    assert failed.state == "failed" and failed.slurm_state == "OUT_OF_MEMORY"
    assert failed.reason == (f"job {sft} OUT_OF_MEMORY (exit 0:125): torch.OutOfMemoryError: "
                             "CUDA out of memory")
    assert failed.error.startswith("torch.OutOfMemoryError")
    assert (failed.elapsed_s, failed.nodes, failed.requeues) == (3725.0, "gpu1", 2)
    assert status["generate/baseline/seed-1"].reason == "SLURM: Resources"
    assert status["dpo/sft_dpo/seed-1"].blocked_by == "sft/sft/seed-1"
    assert status["aggregate"].blocked_by == "sft/sft/seed-1"
    assert json.dumps([s.to_dict() for s in status.values()])


def test_cost_splits_each_job_by_the_seconds_its_stages_recorded_and_totals_in_csv_and_table(make_cfg):
    graph = build_graph(make_cfg(seeds=[1], eval__metrics=["mmlu", "bertscore"]))
    jobs = manifest_jobs(graph)
    for stage in graph:
        if stage.kind != "aggregate":
            finish_stage(stage)
    for key, seconds in (("generate/sft/seed-1", 30.0), ("bertscore/sft/seed-1", 10.0)):
        stage = graph.stages[key]
        stage.write_record("done", seconds=seconds)  # mmlu/sft/seed-1 recorded none: equal split
    (graph.experiment_dir / "table.md").write_text("| Model | n |\n|---|---|\n| sft | 1 |\n")
    details = {e["job_id"]: JobInfo(e["job_id"], "COMPLETED", 3600.0, "n1", cpus=4, gpus=2)
               for e in jobs.values()}
    statuses = stage_statuses(graph, jobs, {j: "COMPLETED" for j in details}, details)
    earlier = {"stage": "sft/sft/seed-1", "job_id": "7", "executor": "slurm"}  # failed, replaced
    details["7"] = JobInfo("7", "FAILED", 1800.0, "n1", cpus=4, gpus=2)
    rows = add_costs(graph, statuses, details, [earlier])
    by_key = {s.key: s for s in statuses}
    eval_job = [s for s in statuses if s.job_id == jobs["generate/sft/seed-1"]["job_id"]]
    assert {s.gpu_hours for s in eval_job} == {2 / 3, 2 / 3, 2 / 3}  # one without seconds: equal
    assert by_key["sft/sft/seed-1"].gpu_hours == 3.0 and by_key["sft/sft/seed-1"].cpu_hours == 6.0
    path = write_cost(graph.experiment_dir, rows)
    rows = list(csv.DictReader(path.open()))
    assert rows[-1]["stage"] == "total"
    total = 2.0 * (len(details) - 1) + 1.0  # every job, the failed one's half hour included
    assert abs(float(rows[-1]["gpu_hours"]) - total) < 1e-5
    assert abs(sum(float(r["cpu_hours"]) for r in rows[:-1]) - 2 * total) < 1e-5
    assert [(r["job_id"], r["state"], r["kept"]) for r in rows if r["stage"] == "sft/sft/seed-1"
            ] == [(jobs["sft/sft/seed-1"]["job_id"], "COMPLETED", "yes"), ("7", "FAILED", "no")]
    table = (graph.experiment_dir / "table.md").read_text()
    # not kept: the failed SFT's hour, and the aggregate's job, which ended without its table
    assert table.splitlines()[-1].startswith(f"_Compute: {total:.2f} GPU-hours (3.00 not kept)")
    write_cost(graph.experiment_dir, add_costs(graph, statuses, details, [earlier]))  # one footer
    assert (graph.experiment_dir / "table.md").read_text() == table
    from rich.console import Console

    console = Console(width=300, file=io.StringIO())
    console.print(render(statuses))
    assert "GPU-h" in console.file.getvalue() and "1:00:00" in console.file.getvalue()


def test_empo_logs_prints_the_current_jobs_log_and_names_stages_it_cannot(make_cfg, tmp_path,
                                                                           capsys):
    from empo.launch.experiment import write_experiment

    cfg = make_cfg(seeds=[1])
    write_experiment(cfg)
    jobs = cfg.experiment_dir / "jobs"  # logs are read only inside the experiment
    jobs.mkdir()
    out, err = jobs / "5_0_log.out", jobs / "5_0_log.err"
    out.write_text("submitit INFO starting\n")
    err.write_text("empo job: sft/sft/seed-1\nTraceback (most recent call last):\nKeyError: 'x'\n")
    manifest = {"jobs": {"sft/sft/seed-1": {"job_id": "5_0", "executor": "slurm", "stdout": str(out),
                                            "stderr": str(err)}}}
    (cfg.experiment_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["logs", str(cfg.experiment_dir), "sft/sft/seed-1"]) == 0
    assert capsys.readouterr().out == "submitit INFO starting\n"
    assert main(["logs", str(cfg.experiment_dir), "sft/", "--err"]) == 0  # a unique prefix
    assert capsys.readouterr().out.startswith("empo job: sft/sft/seed-1")
    assert main(["logs", str(cfg.experiment_dir), "dpo/sft_dpo/seed-1"]) == 2
    assert "never submitted" in capsys.readouterr().err
    assert main(["logs", str(cfg.experiment_dir), "nope"]) == 2
    assert "is not a stage of this experiment" in capsys.readouterr().err


def test_tensorboard_tracking_names_the_run_and_keeps_events_out_of_checkpoints(make_cfg, tmp_path,
                                                                                monkeypatch):
    from empo.train.common import tracking_args

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    cfg = make_cfg(sft__report_to=["tensorboard"])
    run = tmp_path / "runs" / "sft" / "seed-2"
    assert tracking_args(cfg, "sft", run, cfg.sft.report_to) == {
        "report_to": ["tensorboard"], "run_name": f"{cfg.name}/sft/seed-2"}
    import os

    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run / "tensorboard" / "sft")
    assert tracking_args(cfg, "dpo", run, cfg.dpo.report_to) == {"report_to": "none"}
    base = build_graph(make_cfg()).stages["sft/sft/seed-1"].fingerprint
    assert build_graph(cfg).stages["sft/sft/seed-1"].fingerprint == base  # not part of identity


def test_logs_follow_and_status_watch_last_while_the_job_lives(make_cfg, tmp_path, capsys):
    """`empo logs -f` prints what a live job appends until it ends; `empo status --watch`
    refreshes until nothing is running or pending. The job: a real process writing its log,
    recorded as the driver records a local job (its identity, its job folder in its command
    line), so it is taken for the job."""
    import subprocess
    import sys

    from empo.launch.experiment import write_experiment

    from empo.processes import ProcessId

    cfg = make_cfg(seeds=[1])
    write_experiment(cfg)
    folder = cfg.experiment_dir / "jobs"  # a local job of this experiment, as the driver records
    folder.mkdir()
    log = folder / "job.err"
    log.write_text("")
    writer = ("import sys, time\n"
              "for i in range(4):\n"
              "    open(sys.argv[1], 'a').write(f'line {i}\\n'); time.sleep(0.5)\n")
    job = subprocess.Popen([sys.executable, "-c", writer, str(log), "submitit", str(folder)])
    try:
        manifest = {"jobs": {"sft/sft/seed-1": {
            "job_id": str(job.pid), "executor": "local", "stdout": str(log), "stderr": str(log),
            "folder": str(folder), "process": ProcessId.of(job.pid).record()}}}
        (cfg.experiment_dir / "manifest.json").write_text(json.dumps(manifest))
        assert main(["logs", str(cfg.experiment_dir), "sft/sft/seed-1", "-f"]) == 0
        assert capsys.readouterr().out == "".join(f"line {i}\n" for i in range(4))
        assert job.wait(timeout=30) == 0
    finally:
        job.kill()
    again = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)", "submitit",
                              str(folder)])
    try:
        manifest["jobs"]["sft/sft/seed-1"].update(job_id=str(again.pid),
                                                  process=ProcessId.of(again.pid).record())
        (cfg.experiment_dir / "manifest.json").write_text(json.dumps(manifest))
        assert main(["status", str(cfg.experiment_dir), "--watch", "0.5"]) == 0
        out = capsys.readouterr().out
        assert out.count("sft/sft/seed-1") >= 2  # refreshed while the job ran, then stopped
        assert again.poll() is not None  # it returned only once the job had ended
    finally:
        again.kill()
