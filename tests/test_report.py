"""Report: four figures as PNG and PDF and a report.md with the headline numbers."""

import json

import pytest
from helpers_fit import write_claude_json

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
