"""The `llmlab` command as a newcomer meets it: `demo` explains its numbers, `doctor` says what to fix,
and long work (`llmlab.compare`) shows a progress bar."""

from __future__ import annotations

import socket

import pytest

import llmlab
from llmlab import cli, workloads
from llmlab.session.engine import Engine

STATUSES = ("ok", "warn", "fail")


@pytest.mark.slow
def test_demo_explains_its_numbers_with_units(capsys, monkeypatch):
    """Units and one meaning per metric, a plain-text sample answer, notebook 01 as the next step, and
    every latency printed is the run's own summary."""
    runs = []
    real_run = Engine.run

    def recording_run(self, workload, live=False):
        run = real_run(self, workload, live)
        runs.append(run)
        return run

    monkeypatch.setattr(Engine, "run", recording_run)
    assert cli.main(["demo", "-n", "4"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 30
    summary = runs[0].summary()
    assert summary["requests"] == 4
    for name, meaning in (
        ("TTFT", "time to first token"),
        ("ITL", "inter-token latency"),
        ("TPOT", "time per output token"),
    ):
        line = next(x for x in lines if x.strip().startswith(name))
        assert meaning in line
        key = name.lower()
        p50, p90 = cli.duration(summary[f"{key}_p50"]), cli.duration(summary[f"{key}_p90"])
        assert f" {p50} " in line and f" {p90} " in line
        assert p50.endswith((" ms", " s"))
    assert "tokens/s" in out
    assert f"{summary['output_tok_s']:.1f} tokens/s" in out
    assert "notebooks/01_first_run.ipynb" in out
    question = next(i for i, x in enumerate(lines) if cli.DEMO_QUESTION in x)
    answer = lines[question + 1]
    assert answer.strip() and "\\n" not in out and "'" not in answer[:3]


def test_duration_has_a_unit_at_every_scale():
    assert cli.duration(0.0852) == "85.2 ms"
    assert cli.duration(1.934) == "1.93 s"
    assert cli.duration(float("nan")) == "-"


def _check_lines(out: str) -> dict[str, str]:
    """Doctor's check lines by check name (the status word first, then the name)."""
    lines = [x for x in out.splitlines() if x.split(" ", 1)[0] in STATUSES]
    return {x[6:20].strip(): x for x in lines}


def test_doctor_prints_one_line_per_check_and_exits_by_them(capsys):
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    names = [c.name for c in cli.doctor_checks()]
    by_name = _check_lines(out)
    assert list(by_name) == names
    assert len(out.splitlines()) == len(names) + 1  # and one verdict line
    assert {"python", "torch", "memory", "cpu bfloat16", "model cache", "widgets", "vllm", "jupyter port"} <= set(names)
    failed = any(line.startswith("fail") for line in by_name.values())
    assert code == (1 if failed else 0)
    for line in by_name.values():
        assert ("-> fix:" in line) == (not line.startswith("ok"))
    assert "packages checked" in by_name["widgets"]


def test_doctor_fails_when_every_jupyter_port_is_taken(capsys):
    held = []
    try:
        for port in cli.JUPYTER_PORTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken already, by something else
                sock.close()
                continue
            held.append(sock)
        assert cli.main(["doctor"]) == 1
    finally:
        for sock in held:
            sock.close()
    line = _check_lines(capsys.readouterr().out)["jupyter port"]
    assert line.startswith("fail") and "8888-8898 taken" in line
    assert "-> fix:" in line and "--port" in line


def test_doctor_says_how_to_get_a_missing_model_without_downloading(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    cli.main(["doctor"])
    line = _check_lines(capsys.readouterr().out)["model cache"]
    assert line.split()[0] in ("warn", "fail")
    assert str(tmp_path) in line and "-> fix:" in line and "llmlab fetch" in line
    assert not (tmp_path / "downloads").exists()
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_doctor_memory_levels(monkeypatch):
    monkeypatch.setattr(cli, "memory_gib", lambda: (8.0, 0.5))
    low = cli.check_memory()
    assert low.status == "fail" and "0.5 GiB available" in low.found and low.fix
    monkeypatch.setattr(cli, "memory_gib", lambda: (8.0, 2.0))
    assert cli.check_memory().status == "warn"
    monkeypatch.setattr(cli, "memory_gib", lambda: (64.0, 40.0))
    assert cli.check_memory().status == "ok"
    assert cli.memory_gib() is not None  # this machine says how much it has


def _sim_compare(progress: bool):
    wl = workloads.synthetic(4, prompt_len=(16, 32), output_len=4, seed=0)
    return llmlab.compare(
        "sim",
        model="smollm2-135m",
        grid={"block_size": [16, 32]},
        workload=wl,
        quality=False,
        warmup=False,
        progress=progress,
        step_time=lambda slots: 0.001,
    )


def test_compare_shows_progress_per_grid_point(capsys):
    table = _sim_compare(progress=True)
    err = capsys.readouterr().err
    assert len(table) == 2
    assert "compare sim" in err and "2/2" in err
    assert "block_size=32" in err  # the point's label as the bar's postfix


def test_compare_progress_false_prints_nothing(capsys):
    table = _sim_compare(progress=False)
    captured = capsys.readouterr()
    assert len(table) == 2
    assert "compare sim" not in captured.err and "block_size=" not in captured.err
    assert captured.out == ""
