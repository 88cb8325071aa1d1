"""bench/bench.py times mkerofs as a user installs it: the console script of a venv made once in
--workdir, named after a hash of the sources; --mkerofs overrides it, and a venv that cannot be
made falls back to `python -m mkerofs` from the repository.  (Making a real venv needs the
package registry and ~10 s of CPU: these tests stop short of running pip.)"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from support.bench import load_bench

bench = load_bench("bench_install_under_test")


def fake_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "mkerofs" / "__pycache__").mkdir(parents=True)
    (repo / "mkerofs" / "__init__.py").write_text("x = 1\n")
    (repo / "mkerofs" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (repo / "pyproject.toml").write_text("[project]\nname = 'mkerofs'\n")
    (repo / "README.md").write_text("readme\n")
    return repo


def test_the_digest_follows_the_sources_not_their_bytecode(tmp_path, monkeypatch):
    repo = fake_repo(tmp_path)
    monkeypatch.setattr(bench, "REPO", repo)
    first = bench.source_digest()
    (repo / "mkerofs" / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"\1")
    assert bench.source_digest() == first
    (repo / "mkerofs" / "__init__.py").write_text("x = 2\n")
    assert bench.source_digest() != first
    (repo / "mkerofs" / "__init__.py").write_text("x = 1\n")
    assert bench.source_digest() == first
    (repo / "pyproject.toml").write_text("[project]\nname = 'mkerofs'\nversion = '2'\n")
    assert bench.source_digest() != first


def test_a_finished_venv_is_reused_without_running_anything(tmp_path, monkeypatch):
    repo = fake_repo(tmp_path)
    monkeypatch.setattr(bench, "REPO", repo)
    work = tmp_path / "work"
    venv = work / f"venv-{bench.source_digest()}"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "mkerofs"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (venv / bench.VENV_STAMP).write_text("done\n")
    monkeypatch.setattr(bench.subprocess, "run", None)       # any run would fail here
    tool = bench.find_mkerofs(None, work)
    assert tool.argv == [str(script)] and tool.available and not tool.from_repo
    assert "PYTHONPATH" not in tool.env()


def test_a_venv_that_cannot_be_made_falls_back_to_the_repository(tmp_path, monkeypatch, capsys):
    repo = fake_repo(tmp_path)
    (repo / "README.md").unlink()                             # the copy for pip fails
    monkeypatch.setattr(bench, "REPO", repo)
    work = tmp_path / "work"
    stale = work / "venv-000000000000"                        # an older sources' venv
    stale.mkdir(parents=True)
    tool = bench.find_mkerofs(None, work)
    assert tool.argv == [sys.executable, "-m", "mkerofs"] and tool.from_repo
    assert tool.env()["PYTHONPATH"].split(os.pathsep)[0] == str(repo)
    assert "cannot install mkerofs" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == []       # nothing half-made is left


def test_mkerofs_option_overrides_the_venv(tmp_path):
    tool = bench.find_mkerofs(f"{shutil.which('env')} PYTHONPATH=x python3 -m mkerofs",
                              tmp_path)
    assert tool.argv[1:] == ["PYTHONPATH=x", "python3", "-m", "mkerofs"] and tool.from_repo
    assert list(tmp_path.iterdir()) == []
