"""Every example in examples/ runs: the CI workflow's steps (examples/ci/build-image.sh; the
CI service itself is not run), the container-layer conversion on a tar made here, the Python
API script; and shell completion works as the README says."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from support.run import REPO, mkerofs_env

EXAMPLES = REPO / "examples"


@pytest.fixture
def commands(tmp_path):
    """mkerofs and mkerofs-read on PATH, running this tree's code with this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, module in (("mkerofs", "mkerofs"), ("mkerofs-read", "mkerofs.cli.read")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    env = mkerofs_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def read_json(env, *args):
    r = subprocess.run(["mkerofs-read", *map(str, args)], env=env, capture_output=True,
                       check=True)
    return json.loads(r.stdout)


def test_ci_steps_build_verify_and_publish(tmp_path, commands):
    out = tmp_path / "publish"
    env = dict(commands, OUT=str(out), SOURCE_DATE_EPOCH="1700000000")
    r = subprocess.run(["sh", EXAMPLES / "ci" / "build-image.sh"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    image = out / "example.erofs"
    assert f"published {image.stat().st_size} bytes" in r.stdout
    digest, name = (out / "example.erofs.sha256").read_text().split()
    assert name == "example.erofs" and digest == hashlib.sha256(image.read_bytes()).hexdigest()
    report = json.loads((out / "example.erofs.report.json").read_text())
    assert report["image_bytes"] == image.stat().st_size
    assert report["options"]["verify"] is True and report["options"]["compressor"] == "lz4hc"
    assert "verify" in report["phases"]
    assert "data by algorithm:" in (out / "example.erofs.info.txt").read_text()
    # reproducible: the same commit time gives the same bytes
    again = tmp_path / "again"
    subprocess.run(["sh", EXAMPLES / "ci" / "build-image.sh"], env=dict(env, OUT=str(again)),
                   cwd=tmp_path, check=True, capture_output=True)
    assert (again / "example.erofs").read_bytes() == image.read_bytes()
    # the workflow runs that script
    assert "sh examples/ci/build-image.sh" in (EXAMPLES / "ci" / "github-workflow.yml").read_text()


def _layer_tar() -> bytes:
    """A container layer: a file, a directory, an overlayfs whiteout and an opaque dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=None, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, 1700000000
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("etc", kind=tarfile.DIRTYPE)
        add("etc/os-release", b"NAME=example\n")
        add("etc/.wh.removed")
        add("var", kind=tarfile.DIRTYPE)
        add("var/.wh..wh..opq")
    return buf.getvalue()


@pytest.mark.parametrize("how", ["stdin", "path"])
def test_container_layer_conversion(tmp_path, commands, how):
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_layer_tar())
    image = tmp_path / "layer.erofs"
    script = ["sh", EXAMPLES / "container" / "convert-layer.sh", image]
    if how == "stdin":
        with open(layer, "rb") as stdin:
            r = subprocess.run(script, env=commands, stdin=stdin, capture_output=True)
    else:
        r = subprocess.run(script + [layer], env=commands, capture_output=True)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r.stderr
    entries = {e["path"]: e for e in read_json(commands, "ls", "--json", "-R", image)}
    whiteout = entries["/etc/removed"]
    assert (whiteout["type"], whiteout["major"], whiteout["minor"]) == ("char_device", 0, 0)
    assert entries["/etc/os-release"]["size"] == len(b"NAME=example\n")
    report = json.loads((tmp_path / "layer.erofs.report.json").read_text())
    assert report["inodes"]["char_device"] == 1 and report["options"]["inline_data"] is False
    assert report["options"]["tar"]["aufs"] is True
    # the UUID comes from the image's name: a second conversion keeps it
    first = read_json(commands, "info", "--json", image)["uuid"]
    image.unlink()
    with open(layer, "rb") as stdin:
        subprocess.run(script, env=commands, stdin=stdin, check=True)
    assert read_json(commands, "info", "--json", image)["uuid"] == first != \
        "00000000-0000-0000-0000-000000000000"


def test_container_layer_as_tar_index(tmp_path, commands):
    """--index: metadata pointing into the tar, the tar appended; mkerofs-read reads the files
    through the device table from the same file (as the kernel does when it mounts it)."""
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_layer_tar())
    image = tmp_path / "layer.erofs"
    r = subprocess.run(["sh", EXAMPLES / "container" / "convert-layer.sh", "--index", image,
                        layer], env=commands, capture_output=True)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert image.read_bytes().endswith(layer.read_bytes())
    info = read_json(commands, "info", "--json", image)
    assert info["block_size"] == 512 and "device_table" in info["features"]
    r = subprocess.run(["mkerofs-read", "cat", image, "/etc/os-release"], env=commands,
                       capture_output=True)
    assert r.returncode == 0 and r.stdout == b"NAME=example\n", r.stderr


def test_python_api_script(tmp_path):
    r = subprocess.run([sys.executable, EXAMPLES / "python" / "build_and_check.py",
                        EXAMPLES / "tree", tmp_path / "api.erofs"], env=mkerofs_env(),
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "report and image agree" in r.stdout
    assert "Filesystem total blocks: " in r.stdout
    assert (tmp_path / "api.erofs").stat().st_size % 4096 == 0


@pytest.mark.parametrize("prog, module", [("mkerofs", "mkerofs"),
                                          ("mkerofs-read", "mkerofs.cli.read")])
def test_shell_completion(prog, module):
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    run = [sys.executable, "-m", module]
    source = subprocess.run(run, env=dict(mkerofs_env(), **{var: "bash_source"}),
                            capture_output=True, text=True)
    assert source.returncode == 0, source.stderr
    assert f"complete -o nosort -F _{prog.replace('-', '_')}_completion {prog}" in source.stdout
    # what the script asks when TAB is pressed after a partial word
    word = "--ver" if prog == "mkerofs" else "sta"
    answer = subprocess.run(run, env=dict(mkerofs_env(), **{
        var: "bash_complete", "COMP_WORDS": f"{prog} {word}", "COMP_CWORD": "1"}),
        capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    offered = [line.split(",", 1)[1] for line in answer.stdout.splitlines()]
    wanted = {"--verify", "--version"} if prog == "mkerofs" else {"stat", "stats"}
    assert wanted <= set(offered), offered
    zsh = subprocess.run(run, env=dict(mkerofs_env(), **{var: "zsh_source"}),
                         capture_output=True, text=True)
    assert zsh.returncode == 0 and "compdef" in zsh.stdout
