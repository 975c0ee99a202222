"""`dbgpu fit` / `dbgpu report` from the command line: the paper's case and bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers_fit import write_claude_json

from dbgpu.cli import main


def run(argv, capsys):
    """main() as the console script runs it: exit status, stdout, stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:                                # argparse usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_claude_word_case(tmp_path, capsys):
    inp = write_claude_json(tmp_path / "claude.json")
    rc, out, err = run(["fit", str(inp), "--out", str(tmp_path / "fit"), "--device", "cpu"], capsys)
    assert rc == 0, err
    V = json.loads((tmp_path / "fit" / "potential.json").read_text())
    assert list(V) == ["BUZZY", "ATTITUDE", "TURKEY", "PERSONAL", "PROBLEMS"]
    assert V["PERSONAL"] - V["ATTITUDE"] == pytest.approx(math.log(3879 / 66), abs=1e-8)   # 4.07
    assert V["PROBLEMS"] - V["ATTITUDE"] == pytest.approx(math.log(3558 / 20), abs=1e-8)   # 5.18
    assert V["TURKEY"] is None and V["BUZZY"] is None
    assert V["ATTITUDE"] + V["PERSONAL"] + V["PROBLEMS"] == pytest.approx(0, abs=1e-12)
    st = json.loads((tmp_path / "fit" / "stats.json").read_text())
    assert (st["n_states"], st["n_edges"], st["weights"]) == (5, 7, "high_reject")
    assert st["components"]["state_position"] == {"BUZZY": "above", "TURKEY": "above"}
    assert st["components"]["state_level"] == {"BUZZY": 2, "TURKEY": 1}       # BUZZY -> TURKEY -> main
    assert st["components"]["main_size"] == 3 and st["fit"]["converged"]
    assert "main component 3 states" in out

    rc, out, err = run(["report", str(tmp_path / "fit")], capsys)
    assert rc == 0 and (tmp_path / "fit" / "report.md").is_file()


def test_counts_weights_and_threads(tmp_path, capsys):
    import torch

    inp = write_claude_json(tmp_path / "claude.json")
    threads = torch.get_num_threads()
    try:
        rc, _, err = run(["fit", str(inp), "--out", str(tmp_path / "f"), "--weights", "counts",
                          "--threads", "1"], capsys)
    finally:
        torch.set_num_threads(threads)                     # --threads is process-wide
    assert rc == 0, err
    V = json.loads((tmp_path / "f" / "potential.json").read_text())
    # counts: w = N/n_f; ATTITUDE was queried 86 times, PERSONAL 3879
    assert V["PERSONAL"] - V["ATTITUDE"] == pytest.approx(math.log((3879 / 3879) / (66 / 86)), abs=1e-8)


def test_truncated_transitions_warn_and_still_fit(tmp_path, capsys):
    p = tmp_path / "t.jsonl"
    rows = [{"source": "A", "target": "B"}, {"source": "B", "target": "A"}] * 3
    p.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"source": "A", "ta')
    rc, _, err = run(["fit", str(p), "--out", str(tmp_path / "f"), "--weights", "counts"], capsys)
    assert rc == 0
    assert err.strip() == f"dbgpu fit: warning: {p}: ignoring the truncated last line 7"


def bad_inputs(tmp_path):
    good = write_claude_json(tmp_path / "good.json")
    trunc = tmp_path / "trunc.json"
    trunc.write_text(good.read_text()[:100])
    shape = tmp_path / "shape.json"
    shape.write_text('{"A": 3}')
    empty = tmp_path / "empty.json"
    empty.write_text('{"A": ["A"], "B": []}')
    score = tmp_path / "score"
    score.mkdir()
    (score / "states.json").write_text('["a", "b", "c"]')
    np.save(score / "logT.npy", np.zeros((2, 2)))
    return {
        "missing": ([str(tmp_path / "nope.json")], "input not found"),
        "truncated": ([str(trunc)], "is not valid JSON"),
        "wrong shape": ([str(shape)], "not a list of strings"),
        "empty graph": ([str(empty)], "empty graph"),
        "score shape": ([str(score)], "expected (3, 3)"),
        "unknown weights": ([str(good), "--weights", "magic"], "invalid choice: 'magic'"),
        "unknown reject": ([str(good), "--reject", "mid"], "invalid choice: 'mid'"),
        "no out": ([str(good)], "--out"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "wrong shape", "empty graph",
                                  "score shape", "unknown weights", "unknown reject", "no out"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    argv, match = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    rc, out, err = run(["fit", *argv] + ([] if case == "no out" else ["--out", str(out_dir)]), capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and match in err and "Traceback" not in err
    assert err.startswith("dbgpu fit: error:")
    assert not out_dir.exists()


def test_cuda_requested_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    good = write_claude_json(tmp_path / "good.json")
    rc, _, err = run(["fit", str(good), "--out", str(tmp_path / "o"), "--device", "cuda"], capsys)
    assert rc == 2 and "no CUDA device" in err and not (tmp_path / "o").exists()


def test_console_entry_point(tmp_path):
    """The real process: `python -m dbgpu fit` and `report`, exit codes and stderr."""
    inp = write_claude_json(tmp_path / "claude.json")
    r = subprocess.run([sys.executable, "-m", "dbgpu", "fit", str(inp), "--out", str(tmp_path / "f")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "dbgpu", "report", str(tmp_path / "nothing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == f"dbgpu report: error: report directory not found: {tmp_path / 'nothing'}\n"


def test_fit_and_report_on_the_cpu_never_import_torch(tmp_path):
    """Importing torch costs more than fitting 50,000 states: the CPU path does without."""
    inp = write_claude_json(tmp_path / "claude.json")
    code = ("import sys; from dbgpu.cli import main; "
            f"rc = main(['fit', {str(inp)!r}, '--out', {str(tmp_path / 'f')!r}, '--device', 'cpu', '--null', '4']); "
            f"rc = rc or main(['report', {str(tmp_path / 'f')!r}]); "
            "sys.exit(10 if 'torch' in sys.modules else rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # "auto" on a CPU-only torch build: told from torch/version.py, torch left unloaded
    code = ("import sys; from dbgpu.graph import _torch_may_have_gpu, analysis_device; "
            "gpu = _torch_may_have_gpu(); d = analysis_device('auto'); "
            "sys.exit(0 if gpu or (d == 'cpu' and 'torch' not in sys.modules) else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_underflowed_kernel_is_fitted_and_reported(tmp_path, capsys):
    """log T far below float64's range: fitted from log w; an edge beyond reach relative to
    the others is counted in stats.json and named on stderr."""
    from dbgpu import synthetic as sy
    from dbgpu.data import write_score_dir

    V, logT = sy.dense_kernel(12, seed=3)
    write_score_dir(tmp_path / "a", sy.state_names(12), logT)
    write_score_dir(tmp_path / "b", sy.state_names(12), logT - 3000.0)
    low = logT.copy()
    low[0, 5] -= 900.0
    write_score_dir(tmp_path / "c", sy.state_names(12), low)
    for d in "abc":
        rc, _, err = run(["fit", str(tmp_path / d), "--out", str(tmp_path / f"f{d}")], capsys)
        assert rc == 0
        if d == "c":
            assert "1 of 132 edges have weights more than 745 nats below the largest" in err
        else:
            assert err == ""
    pa, pb = (json.loads((tmp_path / f"f{d}" / "potential.json").read_text()) for d in "ab")
    assert all(abs(pa[s] - pb[s]) < 1e-9 for s in pa)
    sb = json.loads((tmp_path / "fb" / "stats.json").read_text())
    assert sb["underflow"]["edges_exp_underflow"] == 132 and sb["underflow"]["fit_dropped"] == 0
    sc = json.loads((tmp_path / "fc" / "stats.json").read_text())
    assert sc["underflow"]["fit_dropped"] == 1 and sc["n_edges"] == 132


def test_low_reject_weights_and_dropped_states(tmp_path, capsys):
    inp = write_claude_json(tmp_path / "claude.json")
    rc, _, err = run(["fit", str(inp), "--out", str(tmp_path / "a"), "--reject", "low"], capsys)
    assert rc == 0, err
    V = json.loads((tmp_path / "a" / "potential.json").read_text())
    # N0 = out-count: PERSONAL 3879 (w = 1), ATTITUDE 86 (w = 66/86 to PERSONAL)
    assert V["PERSONAL"] - V["ATTITUDE"] == pytest.approx(math.log(1 / (66 / 86)), abs=1e-8)
    rc, _, err = run(["fit", str(inp), "--out", str(tmp_path / "b"), "--reject", "low",
                      "--threshold", "90"], capsys)       # ATTITUDE's out-count 86 <= 90
    assert rc == 0 and "no two states reach each other" in err
    st = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert st["components"]["state_position"]["ATTITUDE"] == "dropped"
    assert st["threshold"] == 90


def test_claude_word_case_reversible_model(tmp_path, capsys):
    """msm.json and msm_transitions.npz for the paper's Claude-4 counts. The main component
    is a star round ATTITUDE (a tree: reversible exactly), so x_fg = w_fg u_f and by hand
    pi ~ (x_AP + x_AR, x_AP, x_AR) with x_AP : x_AR = 66 : 20, i.e. pi = (86, 66, 20) / 172,
    and P(ATTITUDE, .) = (66, 20) / 86, P(PERSONAL, ATTITUDE) = P(PROBLEMS, ATTITUDE) = 1."""
    import scipy.sparse as sp

    inp = write_claude_json(tmp_path / "claude.json")
    rc, out, err = run(["fit", str(inp), "--out", str(tmp_path / "fit"), "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "msm.json, msm_transitions.npz" in out
    pi = json.loads((tmp_path / "fit" / "msm.json").read_text())
    assert list(pi) == ["BUZZY", "ATTITUDE", "TURKEY", "PERSONAL", "PROBLEMS"]     # input order
    assert pi["BUZZY"] is None and pi["TURKEY"] is None                           # outside the main SCC
    # tolerance: the fit's relative gradient tolerance 1e-12
    assert [pi["ATTITUDE"], pi["PERSONAL"], pi["PROBLEMS"]] == pytest.approx([86 / 172, 66 / 172, 20 / 172], rel=1e-10)
    f = tmp_path / "fit" / "msm_transitions.npz"
    P = sp.load_npz(f)                                                            # scipy reads it as is
    with np.load(f, allow_pickle=False) as z:
        order = list(z["states"])
        np.testing.assert_allclose(z["pi"], [pi[s] for s in order], rtol=1e-15)   # the same numbers
    assert order == ["ATTITUDE", "PERSONAL", "PROBLEMS"]
    np.testing.assert_allclose(P.toarray(), [[0, 66 / 86, 20 / 86], [1, 0, 0], [1, 0, 0]], atol=1e-10)
    st = json.loads((tmp_path / "fit" / "stats.json").read_text())["msm"]
    assert st["n_states"] == 3 and st["n_transitions"] == 4
    # P = [[0, a, b], [1, 0, 0], [1, 0, 0]] has eigenvalues 1, -1, 0 (bipartite star)
    np.testing.assert_allclose(st["eigenvalues"], [1, -1, 0], atol=1e-9)
    assert st["implied_timescales"][0] is None                    # the -1: infinite (periodic), as null
    assert st["implied_timescales"][1] == pytest.approx(0.0, abs=1e-12)   # lambda 0: -1/log 0 = 0

    rc, _, err = run(["report", str(tmp_path / "fit")], capsys)
    assert rc == 0, err
    md = (tmp_path / "fit" / "report.md").read_text()
    assert "## Reversible Markov model" in md and (tmp_path / "fit" / "msm.png").is_file()
    assert "| 2 | -1 | ∞ (periodic) |" in md                       # the star's -1, not a huge number
