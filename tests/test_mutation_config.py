"""The mutation-testing configuration (tests/mutation/config.toml, see tests/mutation.md) stays
runnable as the code moves: every mutated file exists, every guarded definition is still
there, every test selection names existing tests, and every operator pattern matches one of
cosmic-ray's operator names."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "tests" / "mutation" / "config.toml").read_text())


def _run_module():
    spec = importlib.util.spec_from_file_location("mutation_run",
                                                  ROOT / "tests" / "mutation" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(CONFIG["modules"]))
def test_module_entry_points_at_existing_code_and_tests(name):
    entry = CONFIG["modules"][name]
    run = _run_module()
    for rel in entry["paths"]:
        source = ROOT / rel
        assert source.is_file(), f"{name}: {rel} does not exist"
        if entry.get("only"):
            spans = run.definition_lines(source.read_text(), entry["only"])
            assert all(a <= b for a, b in spans)
    for selection in shlex.split(entry["tests"]):
        assert (ROOT / selection.split("::")[0]).exists(), f"{name}: no {selection}"


def test_definition_lines_find_methods_and_refuse_missing_names():
    run = _run_module()
    source = "class A:\n    def f(self):\n        return 1\n\n\ndef g():\n    pass\n"
    assert run.definition_lines(source, ["A.f", "g", "A"]) == [(2, 3), (6, 7), (1, 3)]
    with pytest.raises(SystemExit, match="not found"):
        run.definition_lines(source, ["h"])


def test_operator_patterns_match_real_operators():
    cosmic_ray = pytest.importorskip("cosmic_ray.plugins", reason="cosmic-ray not installed "
                                     "(pip install cosmic-ray==8.7.0; not in the dev extra)")
    names = list(cosmic_ray.operator_names())
    for pattern in CONFIG["operators"]["allow"]:
        assert any(re.fullmatch(pattern, n) for n in names), f"{pattern} matches no operator"


def test_annotation_spans_only_where_annotations_are_never_evaluated():
    run = _run_module()
    body = ("def f(a: int | None, *, b: list[str] = None) -> dict | None:\n"
            "    c: int | None = a | 1\n"
            "    return {c: b}\n")
    spans = run.annotation_spans("from __future__ import annotations\n" + body)
    lines = ("\n" + body).splitlines()
    found = sorted(lines[a[0] - 1][a[1]:b[1]] for a, b in spans)
    assert found == ["dict | None", "int | None", "int | None", "list[str]"]
    # the expression `a | 1` (line 3) is code, not an annotation: its mutants still run
    assert not any(a[0] == 3 and a[1] >= 20 for a, _ in spans)
    assert run.annotation_spans(body) == []  # evaluated at import: mutants there are real
