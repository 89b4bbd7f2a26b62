"""docs/reference.md cannot drift from the code: every hook, every field and member of the public types, the
`requires`/`capabilities` vocabularies, every metric with the prediction keys it needs and every SDK name is
documented, and nothing documented is gone from the code. docs/plugins.md's walkthrough code is the example's."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import dermbench.api as api
from dermbench import hookspecs

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
GUIDE = ROOT / "docs" / "plugins.md"
DATACLASSES = ("ModelInfo", "Preprocess", "DatasetInfo", "Sample", "Dataset", "Split", "TaskInfo", "TaskOutput")
PROTOCOLS = ("Backbone", "Task", "TaskContext")
#: Backbone members a model provides only with the `text` capability (not part of the Protocol class)
TEXT_MEMBERS = {"encode_text", "embed_image_for_text"}


def _section(text: str, heading: str) -> str:
    """The body under the first heading that starts with ``heading``, up to the next heading of any level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and line.lstrip("#").strip().startswith(heading):
            body = []
            for nxt in lines[i + 1:]:
                if nxt.startswith("#"):
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"{REFERENCE.name} has no heading starting with {heading!r}")


def _rows(section: str) -> dict[str, list[str]]:
    """Table rows keyed by the first backticked name of their first cell (``register_x(register)`` -> register_x)."""
    out = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        name = re.match(r"`([^`(]+)", cells[0]).group(1)
        out[name] = cells
    return out


@pytest.fixture(scope="module")
def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def test_every_hook_is_documented(reference):
    specs = {n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "dermbench_spec")}
    documented = set(_rows(_section(reference, "Hooks")))
    assert specs, "no hookspecs found: the marker name changed?"
    assert specs - documented == set(), f"hooks missing from docs/reference.md: {sorted(specs - documented)}"
    assert documented - specs == set(), f"documented hooks that no longer exist: {sorted(documented - specs)}"


def _public_members(cls: type) -> dict[str, str]:
    """name -> kind (field | property | method | attribute) of a public type, from the code."""
    out: dict[str, str] = {}
    if dataclasses.is_dataclass(cls):
        out.update({f.name: "field" for f in dataclasses.fields(cls)})
    else:
        out.update({n: "attribute" for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")})
    for n, v in vars(cls).items():
        if n.startswith("_") or n in out:
            continue
        if isinstance(v, property):
            out[n] = "property"
        elif callable(v):
            out[n] = "method"
    return out


def _cell_context_members() -> set[str]:
    """Public attributes and methods of the runner's TaskContext implementation (what ``ctx`` really offers)."""
    from dermbench import runner

    tree = ast.parse(inspect.getsource(runner.CellContext))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            names.add(node.name)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" \
                        and not t.attr.startswith("_"):
                    names.add(t.attr)
    return names


@pytest.mark.parametrize("name", DATACLASSES)
def test_every_field_of_each_public_dataclass_is_documented(reference, name):
    cls = getattr(api, name)
    code = _public_members(cls)
    rows = _rows(_section(reference, f"`{name}`"))
    assert set(code) - set(rows) == set(), f"{name}: undocumented {sorted(set(code) - set(rows))}"
    assert set(rows) - set(code) == set(), f"{name}: documented but not in the code {sorted(set(rows) - set(code))}"
    defaults = {f.name: f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                for f in dataclasses.fields(cls)}
    for member, kind in code.items():
        second = rows[member][1]
        if kind == "field":
            assert ("=" in second) == defaults[member], (
                f"{name}.{member}: the docs say {second!r} but the field "
                f"{'has' if defaults[member] else 'has no'} default")
        else:
            assert second == kind, f"{name}.{member} is a {kind}, documented as {second!r}"


@pytest.mark.parametrize("name", PROTOCOLS)
def test_every_member_of_each_protocol_is_documented(reference, name):
    code = set(_public_members(getattr(api, name)))
    rows = set(_rows(_section(reference, f"`{name}`")))
    allowed = set(code)
    if name == "TaskContext":
        real = _cell_context_members()
        assert code - real == set(), f"the runner's context lacks protocol members {sorted(code - real)}"
        allowed |= real
        code |= real
    if name == "Backbone":
        allowed |= TEXT_MEMBERS
    assert code - rows == set(), f"{name}: undocumented {sorted(code - rows)}"
    assert rows - allowed == set(), f"{name}: documented but not in the code {sorted(rows - allowed)}"


def test_vocabularies_are_documented(reference):
    from dermbench.check import META_KEYS

    fields = _rows(_section(reference, "Dataset fields"))
    assert set(fields) == set(api.FIELDS)
    for f, key in META_KEYS.items():  # the meta key each attribute field lives under
        assert f'meta["{key}"]' in fields[f][1], f"field {f}: the docs do not say it lives in Sample.meta[{key!r}]"
    caps = _rows(_section(reference, "Model capabilities"))
    assert set(caps) == set(api.CAPABILITIES)
    for cap, members in {"cls": ("embed",), "patch_tokens": ("patch_tokens",),
                         "text": tuple(sorted(TEXT_MEMBERS))}.items():
        assert all(f"`{m}(" in caps[cap][1] for m in members), caps[cap]


def _keys(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_every_metric_is_documented_with_the_keys_it_needs(reference):
    rows = _rows(_section(reference, "Built-in metrics"))
    registry = dict(api.METRICS)
    assert registry, "the public metric registry is empty"
    assert set(registry) - set(rows) == set(), f"undocumented metrics: {sorted(set(registry) - set(rows))}"
    assert set(rows) - set(registry) == set(), f"documented metrics that do not exist: {sorted(set(rows) - set(registry))}"
    for name, m in registry.items():
        _, needs, direction, definition = rows[name]
        assert _keys(needs) == set(m.needs), f"{name} needs {m.needs}; the docs say {needs}"
        assert direction == ("higher" if m.higher_is_better else "lower"), f"{name}: direction {direction}"
        assert definition, name
    keys = set(_rows(_section(reference, "Prediction keys")))
    for m in registry.values():  # every key a metric needs is explained
        assert set(m.needs) <= keys | {"jaccard"}, m.needs


def test_resolved_metric_names_are_real(reference):
    """Every concrete name in the 'resolved on demand' table resolves, and its keys are the documented ones."""
    table = [line for line in _section(reference, "Metrics resolved by name").splitlines() if line.startswith("| `")]
    checked = 0
    for line in table:
        first, needs = [c.strip() for c in line.strip("|").split(" | ")][:2]
        for name in _keys(first):
            if "<" in name or name.startswith("api."):
                continue
            m = api.get_metric(name)
            missing = set(m.needs) - _keys(needs)
            assert not missing, f"{name} needs {sorted(missing)} too; docs: {needs}"
            checked += 1
    assert checked >= 10
    assert set(api.OP_METRICS) <= set().union(*(_keys(line) for line in table))


def _sdk_names() -> set[str]:
    skip_modules = {"typing", "dataclasses", "pathlib", "__future__", "typing_extensions", "collections.abc"}
    eager = {n for n, v in vars(api).items() if not n.startswith("_") and not inspect.ismodule(v)
             and getattr(v, "__module__", None) not in skip_modules
             and n not in ("annotations", "TYPE_CHECKING")}
    return eager | set(getattr(api, "_LAZY", {}))


def test_every_sdk_name_is_documented(reference):
    documented = _keys(reference)
    names = _sdk_names()
    assert {"TaskOutput", "score", "build_dataset", "resolve_weights"} <= names
    assert names - documented == set(), f"SDK names missing from docs/reference.md: {sorted(names - documented)}"
    index = _section(reference, "SDK index")
    listed = set().union(*(_keys(r[1]) for r in _rows(index).values())) | set(_rows(index))
    listed = {n for n in listed if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)}
    assert listed - names == set(), f"SDK index names that dermbench.api does not have: {sorted(listed - names)}"


@pytest.mark.parametrize("doc", [REFERENCE, GUIDE], ids=lambda p: p.name)
def test_paths_named_in_docs_exist(doc):
    text = doc.read_text(encoding="utf-8")
    paths = set(re.findall(r"\]\(((?:\.\./)?[\w./-]+)\)", text))
    paths |= set(re.findall(r"`((?:examples|tests|docs|dermbench|plugins|dermino_model)/[\w./-]+)`", text))
    assert paths, doc
    for p in sorted(paths):
        base = doc.parent if p.startswith("../") or "/" not in p.split("#")[0] else ROOT
        target = (base / p.split("#")[0]).resolve()
        assert target.exists(), f"{doc.name} names {p}, which does not exist"


def test_walkthrough_code_is_the_example_code():
    """Code blocks of docs/plugins.md that start with `# from <path>` are verbatim excerpts of that file."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n# from ([\w./-]+)\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3, "the walkthrough should quote the example task"
    task = ROOT / "examples/dermbench-example-task/src/dermbench_prototype/__init__.py"
    assert len(task.read_text().splitlines()) < 100, "docs/plugins.md promises a task example under 100 lines"
    for path, body in blocks:
        source = (ROOT / path).read_text(encoding="utf-8").splitlines()
        pos = 0
        for line in body.splitlines():
            if not line.strip() or line.strip() == "...":
                continue
            try:
                pos = source.index(line, pos) + 1
            except ValueError:
                raise AssertionError(f"docs/plugins.md quotes a line not in {path} (or out of order):\n{line}") from None
