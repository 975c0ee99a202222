"""Report: four figures as PNG and PDF and a report.md with the headline numbers."""

import json

import pytest
from helpers_fit import CLAUDE_COUNTS as CLAUDE, write_claude_json

from dbgpu.data import write_score_dir
from dbgpu import synthetic as sy
from dbgpu.commands.fit import fit_input
from dbgpu.errors import DbgpuError
from dbgpu.report import FIGURES, write_report


def check_figures(d):
    for name in FIGURES:
        png, pdf = (d / f"{name}.png").read_bytes(), (d / f"{name}.pdf").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert pdf[:5] == b"%PDF-"


def test_report_on_an_exact_kernel(tmp_path):
    V, logT = sy.dense_kernel(24, seed=1, noise=0.05)
    write_score_dir(tmp_path, sy.state_names(24), logT)
    stats = fit_input(tmp_path, tmp_path, device="cpu")
    md = write_report(tmp_path)
    assert md == tmp_path / "report.md"
    check_figures(tmp_path)
    text = md.read_text()
    for fig in FIGURES:
        assert f"({fig}.png)" in text
    assert f"{stats['pairwise']['r']:.5f}" in text
    assert f"{stats['hodge']['gradient_fraction']:.6f}" in text
    lowest = min(json.loads((tmp_path / "potential.json").read_text()).items(), key=lambda t: t[1])
    assert f"| `{lowest[0]}` | {lowest[1]:.4f} |" in text


def test_report_on_the_claude_case_lists_unbounded_states(tmp_path):
    fit_input(write_claude_json(tmp_path / "c.json"), tmp_path / "out", device="cpu")
    text = write_report(tmp_path / "out").read_text()
    check_figures(tmp_path / "out")
    assert "- `BUZZY`: above" in text and "- `TURKEY`: above" in text
    assert "3-cycles | 0" in text                          # no loop: an empty loop plot, no crash


def test_report_needs_a_fit(tmp_path):
    with pytest.raises(DbgpuError, match="stats file not found"):
        write_report(tmp_path)
    with pytest.raises(DbgpuError, match="not found"):
        write_report(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- what produced a report


def _titles(monkeypatch):
    """The title of every figure write_report saves, by figure name (the figures are
    still written)."""
    import dbgpu.report as rp

    titles, save = {}, rp.save_figure

    def record(fig, out, name):
        sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else fig._suptitle.get_text()
        titles[name] = sup or " / ".join(ax.get_title() for ax in fig.axes if ax.get_title())
        save(fig, out, name)

    monkeypatch.setattr(rp, "save_figure", record)
    return titles


def _header(text: str) -> dict:
    """report.md's "what produced it" table as {what: value}."""
    block = text.split("| what produced it | |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    return dict(line[2:-2].split(" | ", 1) for line in block.splitlines())


def test_report_of_a_run_names_model_task_and_settings(tmp_path, monkeypatch, capsys):
    """A `dbgpu run` directory (tiny random model): the header gives what meta.json records,
    the coverage computed here from logT.npy, the date and version; every figure's title
    names the model and task; a fit of that score directory elsewhere says the same."""
    import datetime

    import numpy as np

    from dbgpu.cli import main
    from dbgpu.version import __version__

    run = tmp_path / "run"
    titles = _titles(monkeypatch)
    rc = main(["run", "--model", "random:llama", "--n-states", "5", "--out", str(run), "--device", "cpu",
               "--temperature", "0.7", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    text = (run / "report.md").read_text()
    assert text.startswith("# dbgpu fit report: random:llama, task word100\n")
    h = _header(text)
    assert h["model"] == "`random:llama` (as given), resolved to `random:llama`"
    assert h["task"] == "`word100`" and h["template"].startswith("the task's default (sha256 ")
    assert h["answer prefix"] == "`'Word:'`" and h["temperature"] == "0.7"
    assert h["dtype / device"] == "float32 on cpu" and h["states"] == "5"
    states = json.loads((run / "states.json").read_text())
    cov = np.exp(np.load(run / "logT.npy")).sum(1)                 # independent of the report's block sums
    assert h["coverage Σ_g T(f,g)"] == (f"median {np.median(cov):.3g}, smallest {cov.min():.3g} "
                                         f"(`{states[int(np.argmin(cov))]}`)")
    meta = json.loads((run / "meta.json").read_text())
    assert h["scored"] == f"{meta['created']}, dbgpu {meta['versions']['dbgpu']}"
    assert h["report"] == f"{datetime.datetime.now(datetime.timezone.utc).date().isoformat()}, dbgpu {__version__}"
    # the word task has features: explain.png; the fit has its reversible model: msm.png
    assert sorted(titles) == sorted([*FIGURES, "msm", "explain"])
    assert all(t.endswith("\nrandom:llama, task word100") for t in titles.values()), titles
    assert text.count("(random:llama, task word100).*") == len(FIGURES) + 1  # one caption per figure, msm too
    # fitted into another directory: the header follows stats.json's input to the score directory
    assert main(["fit", str(run), "--out", str(tmp_path / "fit"), "--device", "cpu", "--quiet"]) == 0
    assert main(["report", str(tmp_path / "fit")]) == 0
    h2 = _header((tmp_path / "fit" / "report.md").read_text())
    assert h2["input"] == f"exact kernel (score directory: `{run}`)"
    assert {k: h2[k] for k in ("model", "task", "temperature", "coverage Σ_g T(f,g)")} == \
        {k: h[k] for k in ("model", "task", "temperature", "coverage Σ_g T(f,g)")}


def test_report_of_sampled_data_names_its_input_file(tmp_path, monkeypatch):
    """A paper JSON file: the header names the file; a transitions.jsonl with its
    explore.json beside it: also the model, task and sampling settings recorded there."""
    import numpy as np

    from dbgpu.explore import run_settings
    from dbgpu.tasks import get_task

    titles = _titles(monkeypatch)
    src = write_claude_json(tmp_path / "claude.json")
    fit_input(src, tmp_path / "paper", device="cpu")
    text = write_report(tmp_path / "paper").read_text()
    assert text.startswith("# dbgpu fit report: sampled: claude.json\n")
    h = _header(text)
    assert h["input"] == f"sampled data, `{src}` (paper-json-1)" and h["states"] == "5"
    assert h["queries / transitions"] == f"{sum(CLAUDE.values())} / {sum(CLAUDE.values())}"
    assert "model" not in h                                          # the file records none
    assert all(t.endswith("\nsampled: claude.json") for t in titles.values())

    V, logT = sy.dense_kernel(6, seed=2, noise=0.2)
    t = sy.sample_dense_counts(logT, per_source=200, seed=1)
    run = tmp_path / "explored"
    run.mkdir()
    log = sy.write_transitions_jsonl(run / "transitions.jsonl", t.states, np.repeat(t.src, t.count),
                                     np.repeat(t.dst, t.count))
    settings = run_settings(model="random:qwen2", task=get_task("word100"), protocol="paper", batch=8,
                            start="BUZZY", temperature=0.5, max_new_tokens=10, seed=3)
    (run / "explore.json").write_text(json.dumps({"settings": settings, "created": "2026-12-04T00:00:00+00:00",
                                                  "calls": []}))
    fit_input(log, tmp_path / "jsonl", device="cpu")
    h = _header(write_report(tmp_path / "jsonl").read_text())
    assert h["model"] == "`random:qwen2` (explore.json)" and h["task"] == "`word100`"
    assert h["temperature"] == "0.5" and h["answer prefix"] == "`'Word:'`"
    assert h["protocol"] == "paper, batch 8, seed 3"
    assert all(t.endswith("\nrandom:qwen2, task word100 (sampled)") for t in titles.values())
