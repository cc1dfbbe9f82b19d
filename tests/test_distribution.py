"""The distribution users would install: built, checked, installed outside the checkout, run.

The wheel and the sdist are built from the project's own files (``python -m build``), their
metadata checked by ``twine check`` (the README renders on a package index), their contents
listed; then the wheel alone is installed into a fresh virtualenv in a temporary directory, far
from this checkout, and ``pynba demo`` runs from there: what a user gets is what we test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # A clean environment for the child: no PYTHONPATH pointing back into the checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PINBA_", "OTEL_"))}
    out = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    # An isolated build, as a package index's builder does it: only pyproject.toml decides.
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    yield out


def _one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_metadata_is_what_a_package_index_accepts(dist: Path) -> None:
    out = _run(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=dist)
    assert out.stdout.count("PASSED") == 2, out.stdout
    wheel = zipfile.ZipFile(_one(dist, "pynba-*.whl"))
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    assert "Name: pynba\n" in text
    assert "Requires-Python: <3.14,>=3.10" in text
    for extra in ("otel", "fast", "web", "test"):
        assert f"Provides-Extra: {extra}\n" in text
    assert 'Requires-Dist: opentelemetry-sdk>=1.20; extra == "otel"' in text
    assert "Description-Content-Type: text/markdown" in text


def test_the_wheel_holds_the_packages_their_data_and_entry_points_nothing_else(
    dist: Path,
) -> None:
    names = set(zipfile.ZipFile(_one(dist, "pynba-*-py3-none-any.whl")).namelist())
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pynba", "pynba_exporter"}
    for needed in (
        "pynba/__init__.py", "pynba/py.typed", "pynba/_cli.py", "pynba/_compat/options.py",
        "pynba_exporter/py.typed", "pynba_exporter/wire/_encode.py",
        "pynba_exporter/collector/static/index.html", "pynba_exporter/collector/static/app.js",
        "pynba_exporter/collector/static/app.css", "pynba_exporter/collector/static/favicon.svg",
        "pynba_exporter/pytest_plugin.py",
    ):  # fmt: skip
        assert needed in names, needed
    sources = {n for n in names if n.endswith(".py")}
    ours = {
        str(p.relative_to(ROOT))
        for package in ("pynba", "pynba_exporter")
        for p in (ROOT / package).rglob("*.py")
    }
    assert sources == ours  # every module, and no test, benchmark or example
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(_one(dist, "pynba-*.whl")).read(entry_points).decode()
    assert "pynba = pynba._cli:main" in text
    assert "[pytest11]" in text and "pynba_exporter.pytest_plugin" in text
    assert "[opentelemetry_traces_exporter]" in text
    assert "[opentelemetry_configurator]" in text


def test_the_sdist_builds_the_same_wheel_contents(dist: Path, tmp_path: Path) -> None:
    sdist = _one(dist, "pynba-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
        assert {"pyproject.toml", "README.md", "pynba_exporter/collector/static/app.js"} <= members
        tar.extractall(tmp_path, filter="data") if sys.version_info >= (3, 12) else tar.extractall(
            tmp_path
        )
    (tree,) = tmp_path.glob("pynba-*")
    rebuilt = tmp_path / "rebuilt"
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", rebuilt, tree, cwd=tmp_path)
    assert set(zipfile.ZipFile(_one(rebuilt, "*.whl")).namelist()) == set(
        zipfile.ZipFile(_one(dist, "pynba-*.whl")).namelist()
    )


def test_the_installed_wheel_runs_the_demo_outside_the_checkout(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "user-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # No index: the wheel has no dependencies, and the classic API, the collector and the
    # demo need none.
    _run(python, "-m", "pip", "install", "-q", "--no-index", _one(dist, "pynba-*.whl"),
         cwd=tmp_path)  # fmt: skip
    where = _run(python, "-c", "import pynba, pynba_exporter; print(pynba.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout
    out = _run(env_dir / "bin" / "pynba", "demo", cwd=tmp_path, timeout=180)
    assert "requests" in out.stdout
    assert "/product/<id>" in out.stdout or "/product" in out.stdout, out.stdout[-2000:]
    version = _run(env_dir / "bin" / "pynba", "--help", cwd=tmp_path)
    assert "demo" in version.stdout
