"""User prompt templates render in jinja2's sandbox: a hostile template is a one-line
error naming its file (exit 2), nothing runs and nothing is written; every built-in
template renders exactly as a plain jinja2 environment renders it."""

from __future__ import annotations

import jinja2
import pytest

from dbgpu.cli import main
from dbgpu.errors import DbgpuError
from dbgpu.tasks import TEMPLATES, fill_template, get_task, read_template

# Each payload, outside a sandbox, would run `touch MARKER` or reach Python internals.
HOSTILE = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.__builtins__['__import__']('os').system('touch MARKER') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ state.__class__.__base__.__subclasses__() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch MARKER') }}{% endif %}{% endfor %}",
    "{{ cycler|attr('__init__')|attr('__globals__') }}",
    "{{ '{0.__class__.__mro__}'.format(state) }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_template_file_is_refused_by_score(tmp_path, capsys, payload):
    marker = tmp_path / "MARKER"
    template = tmp_path / "evil.j2"
    template.write_text("Give a word like {{ state }}." + payload.replace("MARKER", str(marker)))
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "score", "--model", "random:llama", "--task", "word100",
                                "--state-list", "BUZZY,TURKEY", "--template", template, "--out", out, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    # refused by the sandbox, or (an attribute walk the sandbox turned into nothing) undefined
    assert len(lines) == 1 and str(template) in lines[0], err
    assert "sandbox" in lines[0] or "UndefinedError" in lines[0], err
    assert "Traceback" not in err
    assert not marker.exists(), "the template ran code"
    assert not out.exists(), "something was written"


def test_hostile_template_is_refused_by_compare_before_any_scoring(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    good, evil = tmp_path / "a.j2", tmp_path / "b.j2"
    good.write_text("Example: {{ state }}. Another word whose letters sum to 100?")
    evil.write_text("Example: {{ state }}." + HOSTILE[0].replace("MARKER", str(marker)))
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--models", "random:llama", "--templates", f"{good},{evil}",
                           "--task", "word100", "--state-list", "BUZZY,TURKEY", "--out", out, "--quiet")
    assert code == 2 and str(evil) in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists() and not out.exists()


def test_broken_template_file_names_the_file(tmp_path):
    template = tmp_path / "broken.j2"
    template.write_text("Example: {{ state ")
    with pytest.raises(DbgpuError, match="broken.j2.*TemplateSyntaxError"):
        read_template(template)


def test_a_task_s_own_hostile_template_fails_when_rendered(tmp_path):
    """A plugin's template text never reaches a file reader: it is sandboxed where it renders."""
    marker = tmp_path / "MARKER"
    with pytest.raises(DbgpuError, match="sandbox"):
        fill_template("{{ state }}" + HOSTILE[0].replace("MARKER", str(marker)), "BUZZY")
    assert not marker.exists()


def _plain_jinja(template: str, **fields) -> str:
    """Independent rendering: the unsandboxed environment dbgpu used before."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(**fields)


@pytest.mark.parametrize("task_name", sorted(TEMPLATES))
def test_builtin_templates_render_exactly_as_before(task_name):
    task = get_task(task_name)
    states = task.seed_states(6)
    for name, text in TEMPLATES[task_name].items():
        t = get_task(task_name, template=read_template(name, task=task_name))
        for f in states:
            fields = {"state": f}
            if task_name == "formula":
                from dbgpu.tasks.formula import describe
                fields |= {"score": f"{t.score(f):.1f}", "data": describe(t.table)}
            if "{{" in text or "{%" in text:
                expected = _plain_jinja(text, **fields)
            else:                                   # plain {name} slots, filled in by hand
                expected = text
                for k, v in fields.items():
                    expected = expected.replace("{" + k + "}", v)
            assert t.messages(f)[0]["content"] == expected


def test_plain_and_jinja_user_templates_render_as_before(tmp_path):
    (tmp_path / "p.txt").write_text("Example: {state}. Another?")
    (tmp_path / "j.j2").write_text("Example: {{ state | lower }}{% if state|length > 5 %} (long){% endif %}!\n")
    plain = get_task("word100", template=read_template(tmp_path / "p.txt"))
    jinja = get_task("word100", template=read_template(tmp_path / "j.j2"))
    assert plain.messages("BUZZY")[0]["content"] == "Example: BUZZY. Another?"
    assert jinja.messages("ATTITUDE")[0]["content"] == "Example: attitude (long)!\n"
