"""soci.py and registry.py must work when copied alone into a project."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VENDORABLE = ["soci.py", "registry.py"]
MODULES = ["soci.py", "registry.py", "store.py", "hermes.py"]
SIBLINGS = {name[:-3] for name in os.listdir(HERE) if name.endswith(".py")}


def module_level_imports(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module.split(".")[0]


@pytest.mark.parametrize("name", VENDORABLE)
def test_vendorable_modules_import_only_the_standard_library(name):
    for module in module_level_imports(os.path.join(HERE, name)):
        assert module in sys.stdlib_module_names, (name, module)
        assert module not in SIBLINGS, (name, module)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_version_and_all(name):
    with open(os.path.join(HERE, name)) as f:
        tree = ast.parse(f.read())
    assigned = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                assigned[target.id] = node.value
    assert ast.literal_eval(assigned["__version__"]) == "0.1.0"
    exported = ast.literal_eval(assigned["__all__"])
    assert exported and all(isinstance(n, str) for n in exported)
    assert ast.get_docstring(tree)


def test_copied_modules_work_alone(tmp_path):
    for name in VENDORABLE:
        shutil.copy(os.path.join(HERE, name), tmp_path / name)
    script = (
        "import gzip, io, tarfile, soci, registry\n"
        "buf = io.BytesIO()\n"
        "with tarfile.open(fileobj=buf, mode='w') as t:\n"
        "    i = tarfile.TarInfo('a'); i.size = 2\n"
        "    t.addfile(i, io.BytesIO(b'hi'))\n"
        "blob = gzip.compress(buf.getvalue())\n"
        "z = soci.build_ztoc(io.BytesIO(blob))\n"
        "z = soci.Ztoc.from_bytes(z.to_bytes())\n"
        "r = soci.SpanReader(z, lambda o, n: blob[o:o + n])\n"
        "e = z.entries[0]\n"
        "assert r.read(e.offset, e.size) == b'hi'\n"
        "print(registry.parse_reference('nginx'))\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "registry-1.docker.io/library/nginx:latest"


def test_importing_a_module_starts_no_thread():
    script = ("import threading, soci, registry, store, hermes\n"
              "print(threading.active_count())")
    out = subprocess.run([sys.executable, "-c", script], cwd=HERE,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
