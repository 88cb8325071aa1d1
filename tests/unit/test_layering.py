"""The package's import layers: cli -> writer / reader -> codecs -> ondisk -> errors, util.

Checked statically (every import statement of every module under mkerofs/, parsed with ast) and
at run time (a fresh interpreter imports one module and lists sys.modules): no module imports a
layer above its own, the reader never loads the writer or multiprocessing, `import mkerofs`
loads no submodule, the module-level imports have no cycle, and no import sits inside a function
except the few named in LATE_IMPORTS with their reason.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.run import REPO, mkerofs_env

PACKAGE_DIR = REPO / "mkerofs"

# Which layers a layer may import (its own included). cli and __main__ may import anything;
# "package" is mkerofs/__init__.py, which binds its public names lazily and imports nothing.
MAY_IMPORT = {
    "errors": set(),
    "util": set(),
    "ondisk": {"ondisk", "errors", "util"},
    "codecs": {"codecs", "ondisk", "errors", "util"},
    "reader": {"reader", "codecs", "ondisk", "errors", "util"},
    "writer": {"writer", "codecs", "ondisk", "errors", "util"},
    "package": set(),
}
# the writer modules allowed to use the reader: --verify reads the new image back, rebuild
# mode (and --incremental) reads the source images
WRITER_MODULES_THAT_READ = {"mkerofs.writer.verify", "mkerofs.writer.layers",
                            "mkerofs.writer.incremental"}

# Imports inside function bodies, (file under mkerofs/, module imported) -> why it is late.
LATE_IMPORTS_BY_DESIGN = {
    ("__init__.py", "importlib"):
        "PEP 562 __getattr__: `import mkerofs` loads nothing until build/BuildOptions is used",
    ("codecs/native.py", "zstandard"):
        "the zstd fallback: imported only when no system libzstd serves zstd",
    ("writer/build.py", "mkerofs.writer.verify"):
        "a build loads the reader only when --verify asks for it",
    ("writer/build.py", "mkerofs.writer.layers"):
        "a build loads the reader only in rebuild mode (EROFS images as SOURCE)",
    ("writer/build.py", "mkerofs.writer.incremental"):
        "a build loads the reader only with --incremental (the base image is read)",
    ("writer/incremental.py", "mkerofs.writer.verify"):
        "an increment loads the reader's comparison (and tarfile) only when --verify asks",
    ("writer/build.py", "mkerofs.writer.tarstream"):
        "a build loads the tar reader only for tar input (a directory build never reads a tar)",
    ("writer/build.py", "mkerofs.writer.tarsource"):
        "the tar reader: as above",
    ("writer/build.py", "mkerofs.writer.tarsplit"):
        "the tar reader on two cores: as above",
    ("writer/build.py", "mkerofs.writer.decompress"):
        "the tar decoders (gzip, xz, zstd ...): as above",
    ("writer/build.py", "mkerofs.writer.spool"):
        "file data kept aside: only tar input and rebuild mode spool it",
    ("writer/build.py", "mkerofs.writer.workers"):
        "the compression workers: a build without -z never loads them (nor concurrent.futures)",
    ("writer/data.py", "concurrent.futures"):
        "copying by threads, only where forking is not safe",
    ("writer/workers.py", "multiprocessing"):
        "only compression in processes needs it; a build without -z never loads it",
    ("cli/progress.py", "tqdm"):
        "only a bar on a terminal needs tqdm; every other run (scripts, pipes, --quiet) skips "
        "its import",
    ("cli/read.py", "mkerofs.reader.compare"):
        "only the compare subcommand needs it",
    ("cli/read.py", "mkerofs.writer.options"):
        "compare --exclude-*: the reading tool loads the writer only for the build's exclusion rules",
    ("cli/read.py", "mkerofs.writer.walk"):
        "compare --exclude-*: as above",
    ("reader/image.py", "mkerofs.codecs.registry"):
        "the decoders (and ctypes): only an image with compressed data loads them; rebuild "
        "mode and --incremental read most images without",
    ("cli/mkfs.py", "mkerofs.codecs.spec"):
        "-z parsing: a build without -z loads no codec module (~40 ms of start-up)",
    ("cli/mkfs.py", "mkerofs.codecs.registry"):
        "-V: the list of algorithms and the libraries serving them: as above",
    ("writer/build.py", "mkerofs.writer.compress"):
        "compression planning: only a build with -z (or -C, compress hints) loads it",
    ("writer/build.py", "mkerofs.codecs.spec"):
        "the -z algorithms: as above",
    ("writer/build.py", "mkerofs.writer.hints"):
        "--compress-hints: as above",
    ("writer/build.py", "hashlib"):
        "OpenSSL (~3.5 MB resident): loaded only by builds that hash (a SOURCE_DATE_EPOCH UUID)",
    ("writer/compress.py", "hashlib"):
        "OpenSSL: only -Ededupe with -z hashes clusters",
    ("writer/packed.py", "hashlib"):
        "OpenSSL: only -Efragments' fragment dedupe hashes",
    ("writer/options.py", "mkerofs.writer.compress"):
        "the -C pcluster size check: only -C loads the compression modules",
    ("writer/walk.py", "mkerofs.writer.selinux"):
        "--file-contexts: only a build that labels files loads the matcher",
    ("writer/build.py", "mkerofs.writer.packed"):
        "the packed inode: only a build with -Efragments (or -Eall-fragments) loads it",
    ("writer/build.py", "mkerofs.writer.vmdk"):
        "--vmdk-desc: only a build that writes a descriptor loads it",
    ("cli/mkfs.py", "json"):
        "--report: only a build that writes its report loads the JSON encoder",
    ("cli/common.py", "traceback"):
        "-d9/--debug: only a failing run that shows its traceback loads it",
    ("cli/common.py", "click"):
        "click.shell_completion: only a run asked by a shell to complete a word loads it",
    ("cli/mkfs.py", "mkerofs.writer.build"):
        "the pipeline: --help, -V and usage errors end before a build and never load it",
    ("writer/workers.py", "concurrent.futures"):
        "compression on threads, only where forking is not safe (it brings logging too)",
    ("writer/decompress.py", "gzip"):
        "the tar decoders: only a compressed tar loads its own (a plain tar none of them)",
    ("writer/decompress.py", "lzma"):
        "the tar decoders: as above",
    ("writer/decompress.py", "bz2"):
        "the tar decoders: as above",
    ("writer/decompress.py", "zstandard"):
        "the tar decoders: as above (zstandard: ~2 MiB resident, ~10 ms of start-up)",
    ("writer/spool.py", "tempfile"):
        "tempfile (with shutil, bz2, lzma, random): only a build that spools file data "
        "loads it; a tar read in place does not",
    ("writer/report.py", "mkerofs.ondisk.index"):
        "the map headers' algorithms: only a build that tallies its files (the API's "
        "default, the command line's --report) loads the index code without -z",
}
LATE_IMPORTS = LATE_IMPORTS_BY_DESIGN


@dataclass(frozen=True)
class ImportStatement:
    path: str           # file under mkerofs/, e.g. "reader/image.py"
    importer: str       # e.g. "mkerofs.reader.image"
    target: str         # the module imported, relative imports resolved: "mkerofs.ondisk.format"
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"mkerofs/{self.path}:{self.line}: {self.importer} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _targets(node: ast.AST, importer: str, is_package: bool, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names]


def import_statements() -> list[ImportStatement]:
    modules = package_modules()
    found = []
    for name, path in modules.items():
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, name, is_package, modules):
                        found.append(ImportStatement(rel, name, target, child.lineno, in_function))
                visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                               ast.AsyncFunctionDef)))

        visit(ast.parse(path.read_text(), str(path)), False)
    return found


def layer(module: str) -> str:
    """errors, util, ondisk, codecs, reader, writer, cli, main (mkerofs.__main__) or package."""
    parts = module.split(".")
    if parts == ["mkerofs"]:
        return "package"
    if parts[1] == "__main__":
        return "main"
    return parts[1]


def upward(statement: ImportStatement) -> bool:
    if not statement.target.startswith("mkerofs"):
        return False
    source, target = layer(statement.importer), layer(statement.target)
    if source in ("cli", "main"):
        return False
    if source == "writer" and target == "reader":
        return statement.importer not in WRITER_MODULES_THAT_READ
    return target not in MAY_IMPORT[source]


# -- static ----------------------------------------------------------------------------------------

def test_the_parser_sees_the_imports_it_must():
    """The checks below are only as good as the import list: a few known edges must be in it."""
    edges = {(s.importer, s.target) for s in import_statements()}
    assert ("mkerofs.reader.image", "mkerofs.reader.zmap") in edges        # from . import zmap
    assert ("mkerofs.reader.image", "mkerofs.ondisk.format") in edges      # from ..ondisk import format
    assert ("mkerofs.writer.verify", "mkerofs.reader.image") in edges
    assert ("mkerofs.cli.mkfs", "mkerofs") in edges                        # from .. import __version__
    layers = {layer(m) for m in package_modules()}
    assert layers >= {"errors", "util", "ondisk", "codecs", "reader", "writer", "cli", "package"}
    assert layers <= set(MAY_IMPORT) | {"cli", "main"}, "a module outside every layer"


def test_no_module_imports_a_layer_above_its_own():
    wrong = [str(s) for s in import_statements() if upward(s)]
    assert wrong == [], "imports pointing up:\n  " + "\n  ".join(wrong)


def test_the_layer_rule_would_catch_a_reader_importing_the_writer():
    fake = ImportStatement("reader/image.py", "mkerofs.reader.image", "mkerofs.writer.options",
                           1, False)
    assert upward(fake)
    assert upward(ImportStatement("ondisk/format.py", "mkerofs.ondisk.format",
                                  "mkerofs.codecs.registry", 1, False))
    assert upward(ImportStatement("writer/build.py", "mkerofs.writer.build",
                                  "mkerofs.reader.image", 1, False))
    assert not upward(ImportStatement("writer/verify.py", "mkerofs.writer.verify",
                                      "mkerofs.reader.image", 1, False))


def test_no_imports_inside_functions_except_the_named_ones():
    late = [s for s in import_statements() if s.in_function]
    unexpected = [str(s) for s in late if (s.path, s.target) not in LATE_IMPORTS]
    assert unexpected == [], ("imports inside functions (move them to the top, or add them to "
                              "LATE_IMPORTS with the reason):\n  " + "\n  ".join(unexpected))


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {m: set() for m in package_modules()}
    for s in import_statements():
        # a package's __init__ always runs before its modules: importing it is no edge back
        if not s.in_function and s.target in graph and not s.importer.startswith(s.target + "."):
            graph[s.importer].add(s.target)
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            found = cycle_from(target, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = cycle_from(module, [])
        assert found is None, "import cycle: " + " -> ".join(found)


# -- at run time -----------------------------------------------------------------------------------

def modules_loaded_by(statement: str) -> set[str]:
    """Modules a fresh interpreter has after `statement` that it did not have at start-up."""
    code = ("import sys\nbefore = set(sys.modules)\n" + statement +
            "\nimport json\nprint(json.dumps(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-c", code], env=mkerofs_env(), cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def test_import_mkerofs_loads_no_submodule():
    loaded = {m for m in modules_loaded_by("import mkerofs") if m.startswith("mkerofs")}
    assert loaded == {"mkerofs"}


def test_import_mkerofs_then_build_binds_the_writer_on_first_use():
    """The other side of the lazy package: the public names still work."""
    loaded = modules_loaded_by("import mkerofs\nmkerofs.build\nmkerofs.BuildOptions")
    assert {"mkerofs.writer.build", "mkerofs.writer.options"} <= loaded


@pytest.mark.parametrize("module", ["mkerofs.ondisk.format", "mkerofs.codecs.registry",
                                    "mkerofs.reader", "mkerofs.reader.extract",
                                    "mkerofs.reader.compare"])
def test_importing_a_layer_loads_only_the_layers_below(module):
    loaded = modules_loaded_by(f"import {module}")
    assert module in loaded
    allowed = MAY_IMPORT[layer(module)]
    wrong = sorted(m for m in loaded
                   if m.startswith("mkerofs.") and layer(m) not in allowed)
    assert wrong == [], f"import {module} loads {wrong}"
    assert "multiprocessing" not in loaded, f"import {module} loads multiprocessing"


def test_import_mkerofs_reader_loads_no_writer():
    """Spelled out (the parametrized test above covers it): the reader stands alone."""
    loaded = modules_loaded_by("import mkerofs.reader")
    assert not [m for m in loaded if m.startswith(("mkerofs.writer", "mkerofs.cli"))]
    assert "multiprocessing" not in loaded


# -- the tests' own oracle -------------------------------------------------------------------------

def test_the_oracle_parser_is_independent_of_mkerofs():
    """tests/support/oracle.py checks mkerofs' images: if it used mkerofs' format definitions a
    misreading there would hide here."""
    support = Path(__file__).resolve().parent.parent / "support"
    statement = f"sys.path.insert(0, {str(support.parent)!r})\nimport support.oracle"
    loaded = modules_loaded_by(statement)
    assert "support.oracle" in loaded
    assert not [m for m in loaded if m.split(".")[0] == "mkerofs"]
    for name in ("oracle.py", "paths.py"):                # and not late, inside a function
        tree = ast.parse((support / name).read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "mkerofs"], name
