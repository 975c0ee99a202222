"""Importers and weights: counts, visits and weights checked against hand counts."""

import json

import numpy as np
import pytest
from helpers_fit import CLAUDE_COUNTS, write_claude_json

from dbgpu.data import (
    DbgpuWarning,
    Kernel,
    count_weights,
    exact_weights,
    high_reject_weights,
    low_reject_weights,
    make_edges,
    read_input,
    read_paper_json,
    read_score_dir,
    read_transitions_jsonl,
)
from dbgpu.errors import DbgpuError


def edge_dict(t, values):
    return {(t.states[s], t.states[d]): v for s, d, v in zip(t.src, t.dst, values)}


def test_paper_shape1_counts_visits_and_order(tmp_path):
    t = read_paper_json(write_claude_json(tmp_path / "c.json"))
    # document order: each source, then its targets
    assert t.states == ["BUZZY", "ATTITUDE", "TURKEY", "PERSONAL", "PROBLEMS"]
    assert edge_dict(t, t.count) == CLAUDE_COUNTS
    visits = dict(zip(t.states, t.visits))
    assert visits == {"BUZZY": 3859 + 238, "ATTITUDE": 86, "TURKEY": 4122, "PERSONAL": 3879,
                      "PROBLEMS": 3558}
    assert t.kind == "paper-json-1"


def test_paper_shape2_one_transition_per_source_entry(tmp_path):
    rows = [
        {"target_expression": "x+p1", "target_score": 0.5,
         "source_expressions": [{"expression": "x", "score": 0.1}, {"expression": "x*p1", "score": 0.2}]},
        {"target_expression": "x", "target_score": 0.1,
         "source_expressions": [{"expression": "x+p1", "score": 0.5}]},
        {"target_expression": "x+p1", "target_score": 0.5,
         "source_expressions": [{"expression": "x", "score": 0.1}, {"expression": "x+p1", "score": 0.5}]},
    ]
    p = tmp_path / "s2.json"
    p.write_text(json.dumps(rows))
    t = read_paper_json(p)
    assert edge_dict(t, t.count) == {("x", "x+p1"): 2, ("x*p1", "x+p1"): 1, ("x+p1", "x"): 1}
    assert dict(zip(t.states, t.visits)) == {"x": 2, "x*p1": 1, "x+p1": 2}
    assert t.n_self == 1                                   # x+p1 -> x+p1: a visit, no edge


def test_transitions_jsonl_null_targets_and_self(tmp_path):
    rows = [
        {"source": "A", "answer": "b", "target": "B", "step": 0, "slot": 0},
        {"source": "A", "answer": "??", "target": None, "step": 0, "slot": 1},
        {"source": "A", "answer": "a", "target": "A", "step": 1, "slot": 0},
        {"source": "B", "answer": "a", "target": "A", "step": 1, "slot": 1},
        {"source": "B", "answer": "c", "target": "C", "rejected": True, "step": 2, "slot": 0},
        {"source": "A", "answer": "b", "target": "B", "step": 2, "slot": 1},
    ]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = read_transitions_jsonl(p)
    assert t.states == ["A", "B"]                          # C only appeared as a rejected answer
    assert edge_dict(t, t.count) == {("A", "B"): 2, ("B", "A"): 1}
    assert dict(zip(t.states, t.visits)) == {"A": 4, "B": 2}
    assert (t.n_self, t.n_invalid) == (1, 2)


def test_transitions_jsonl_truncated_last_line_is_ignored_with_warning(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"source": "A", "target": "B"}\n{"source": "B", "target": "A"}\n{"source": "A", "tar')
    with pytest.warns(DbgpuWarning, match="truncated last line 3"):
        t = read_transitions_jsonl(p)
    assert int(t.visits.sum()) == 2


def test_transitions_jsonl_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"source": "A", "target": "B"}\n{"source": "A", "tar\n{"source": "B", "target": "A"}\n')
    with pytest.raises(DbgpuError, match="line 2 is not valid JSON"):
        read_transitions_jsonl(p)


def test_score_dir_exact_weights_exclude_diagonal(tmp_path):
    logT = np.log(np.array([[0.5, 0.2, 0.1], [0.3, 0.4, 1e-3], [0.05, 0.25, 0.6]]))
    (tmp_path / "states.json").write_text(json.dumps(["a", "b", "c"]))
    np.save(tmp_path / "logT.npy", logT)
    k = read_input(tmp_path)
    assert isinstance(k, Kernel) and k.states == ["a", "b", "c"]
    e = exact_weights(k)
    got = {(k.states[s], k.states[d]): w for s, d, w in zip(e.src, e.dst, e.w)}
    assert got == pytest.approx({("a", "b"): 0.2, ("a", "c"): 0.1, ("b", "a"): 0.3,
                                 ("b", "c"): 1e-3, ("c", "a"): 0.05, ("c", "b"): 0.25})
    np.testing.assert_allclose(e.log_w, np.log(e.w))


def test_score_dir_errors(tmp_path):
    (tmp_path / "states.json").write_text(json.dumps(["a", "b"]))
    np.save(tmp_path / "logT.npy", np.zeros((3, 3)))
    with pytest.raises(DbgpuError, match=r"shape \(3, 3\), expected \(2, 2\)"):
        read_score_dir(tmp_path)
    (tmp_path / "logT.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DbgpuError, match="cannot read"):
        read_score_dir(tmp_path)
    (tmp_path / "logT.npy").unlink()
    with pytest.raises(DbgpuError, match="without logT.npy"):
        read_input(tmp_path)


def test_high_reject_claude_weights(tmp_path):
    t = read_paper_json(write_claude_json(tmp_path / "c.json"))
    e = high_reject_weights(t)                             # N0 = 20000 / 5 = 4000
    got = edge_dict(t, e.w)
    assert got == pytest.approx({k: min(1.0, n / 4000) for k, n in CLAUDE_COUNTS.items()})
    assert got[("TURKEY", "ATTITUDE")] == 1.0              # 4122 > N0: saturated


def test_high_reject_warns_above_20000_states():
    from dbgpu.data import transitions_from_pairs

    names = [f"s{i}" for i in range(20001)]
    t = transitions_from_pairs(names, names[1:] + names[:1], kind="test")
    with pytest.warns(DbgpuWarning, match="N0 = 20000/20001"):
        e = high_reject_weights(t)
    assert np.all(e.w == 1.0)


def test_low_reject_and_counts_weights():
    from dbgpu.data import transitions_from_pairs

    src = ["A"] * 4 + ["B"] * 3 + ["C"]
    tgt = ["B", "B", "C", None, "A", "A", "B", "A"]
    t = transitions_from_pairs(src, tgt, kind="test")
    # low_reject: N0 = out-count (recorded transitions to other states): A 3, B 2, C 1
    e = low_reject_weights(t, threshold=0)
    assert edge_dict(t, e.w) == pytest.approx({("A", "B"): 2 / 3, ("A", "C"): 1 / 3,
                                               ("B", "A"): 1.0, ("C", "A"): 1.0})
    e1 = low_reject_weights(t, threshold=1)                # drops C (N0 = 1 <= 1) and its edges
    assert dict(zip(t.states, e1.kept)) == {"A": True, "B": True, "C": False}
    assert {(t.states[s], t.states[d]) for s, d in zip(e1.src, e1.dst)} == {("A", "B"), ("B", "A")}
    # counts: N / n_f with n_f every query (the invalid one and B's self-answer included)
    c = count_weights(t)
    assert edge_dict(t, c.w) == pytest.approx({("A", "B"): 2 / 4, ("A", "C"): 1 / 4,
                                               ("B", "A"): 2 / 3, ("C", "A"): 1.0})


def test_make_edges_errors(tmp_path):
    t = read_paper_json(write_claude_json(tmp_path / "c.json"))
    with pytest.raises(DbgpuError, match="unknown weights mode 'fancy'"):
        make_edges(t, weights="fancy")
    with pytest.raises(DbgpuError, match="unknown reject mode 'mid'"):
        make_edges(t, reject="mid")
    p = tmp_path / "self.json"
    p.write_text(json.dumps({"A": ["A", "A"], "B": []}))
    with pytest.raises(DbgpuError, match="empty graph"):
        make_edges(read_paper_json(p))


@pytest.mark.parametrize("content, match", [
    ('{"A": ["B", "C"', "not valid JSON"),                  # truncated
    ('{"A": "B"}', "not a list of strings"),
    ('[{"target": "x"}]', "entry 0 is not one"),
    ('"just a string"', "unrecognised JSON shape"),
])
def test_paper_json_errors(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DbgpuError, match=match):
        read_input(p)


def test_read_input_kinds(tmp_path):
    with pytest.raises(DbgpuError, match="input not found"):
        read_input(tmp_path / "nope.json")
    p = tmp_path / "data.csv"
    p.write_text("a,b\n")
    with pytest.raises(DbgpuError, match="cannot tell the kind"):
        read_input(p)
