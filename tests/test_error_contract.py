"""README "Errors and exit codes", read from the README itself: every error class in the table
has that exit code and derives from the standard exception the table names (so a caller's
``except OSError`` keeps working), real failures are caught by those standard exceptions, and
``unet-deploy exit-codes`` lists exactly the table's codes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import unet_deploy.errors as errors
from unet_deploy.cli import app

README = Path(__file__).parents[1] / "README.md"


def readme_table() -> list[tuple[int, str]]:
    """(exit code, error-class cell) rows of the README's exit-code table."""
    text = README.read_text()
    section = text[text.index("## Errors and exit codes"):]
    section = section[: section.index("\n\n", section.index("| exit |"))]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
    return rows


def test_table_classes_have_their_exit_code_and_standard_base():
    rows = readme_table()
    assert {code for code, _ in rows} >= {0, 1, 3, 4, 5, 6, 130}
    checked = 0
    for code, cell in rows:
        for name in re.findall(r"`(\w+)`", cell):
            cls = getattr(errors, name, None)
            if cls is None:  # a standard exception named as a base
                continue
            assert issubclass(cls, errors.UnetDeployError), name
            assert cls.exit_code == code, f"{name}: exit {cls.exit_code}, README says {code}"
            checked += 1
        for name, base in re.findall(r"`(\w+)` \((?:also )?`(\w+)`\)", cell):
            std = getattr(__builtins__, base, None) if not isinstance(__builtins__, dict) \
                else __builtins__.get(base)
            assert isinstance(std, type) and issubclass(std, BaseException), base
            assert issubclass(getattr(errors, name), std), f"{name} is not a {base}"
            checked += 1
    assert checked >= 10


def test_every_error_class_is_covered_by_the_table():
    """Each error class is in the table, or subclasses one that is, with the same exit code."""
    named = {getattr(errors, n) for _, cell in readme_table() for n in re.findall(r"`(\w+)`", cell)
             if isinstance(getattr(errors, n, None), type)}
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.UnetDeployError):
            covering = [c for c in named if issubclass(cls, c) and c.exit_code == cls.exit_code]
            assert covering, f"{name} (exit {cls.exit_code}) is not covered by the README table"


def test_exit_codes_command_lists_the_table():
    res = CliRunner().invoke(app, ["exit-codes"])
    assert res.exit_code == 0, res.output
    listed = {int(line.split()[0]): line.split(None, 1)[1] for line in res.output.splitlines()
              if line.strip()}
    assert set(listed) == {code for code, _ in readme_table()} == set(errors.EXIT_CODES)
    assert all(text.strip() for text in listed.values())


def test_real_failures_are_caught_by_the_standard_exceptions(tmp_path, tiny_model):
    """What a caller writes: ``except OSError`` / ``FileNotFoundError`` / ``ValueError`` /
    ``RuntimeError`` around the library, with the real code paths raising."""
    import tifffile

    from unet_deploy.backends import open_backend
    from unet_deploy.pipeline import segment_array, segment_file

    img = tmp_path / "in.tif"
    tifffile.imwrite(img, np.zeros((40, 40), np.uint16))
    existing = tmp_path / "out.tif"
    existing.write_bytes(b"keep")
    with pytest.raises(OSError) as ei:  # output exists, no overwrite
        segment_file(img, existing, tiny_model, progress=False)
    assert isinstance(ei.value, errors.OutputError) and existing.read_bytes() == b"keep"
    with pytest.raises(FileNotFoundError) as ei:
        segment_file(tmp_path / "missing.tif", tmp_path / "o.tif", tiny_model, progress=False)
    assert isinstance(ei.value, errors.InputNotFoundError)
    with pytest.raises(ValueError) as ei:
        segment_array(np.zeros((2, 3, 4, 5)), tiny_model)
    assert isinstance(ei.value, errors.InputError)
    with pytest.raises(RuntimeError) as ei:
        open_backend(tiny_model, "no-such-backend")
    assert isinstance(ei.value, errors.BackendError)
    with pytest.raises(FileNotFoundError) as ei:
        open_backend(tmp_path / "nope.onnx")
    assert isinstance(ei.value, errors.ModelNotFoundError)
