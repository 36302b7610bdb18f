"""setup.sh refuses a Python older than 3.11 in one line, before it creates or installs anything."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
ADVICE = "PYTHON=python3.11 bash setup.sh"


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter that answers setup.sh's version query as that Python would, and nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def run_setup(project: Path, python: Path) -> subprocess.CompletedProcess:
    """setup.sh, copied with requirements.txt into `project` so the real checkout's .venv is never at stake."""
    project.mkdir(exist_ok=True)
    for name in ("setup.sh", "requirements.txt"):
        shutil.copy(PROJECT / name, project / name)
    env = {**os.environ, "PYTHON": str(python), "SHARED_DIR": str(project / "no-shared")}
    return subprocess.run(["bash", str(project / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


@pytest.mark.parametrize("version", ["3.8.10", "3.10.13", "2.7.18"])
def test_an_old_python_is_refused_before_anything_is_created(tmp_path, version):
    project = tmp_path / "project"
    finished = run_setup(project, fake_python(tmp_path / "python", version))
    assert finished.returncode != 0
    assert finished.stderr.splitlines() == [f"setup: Python 3.11 or newer is needed; {tmp_path / 'python'} is "
                                            f"{version}. Install a newer Python and run {ADVICE}"]
    assert files_under(project) == ["requirements.txt", "setup.sh"]  # no .venv, no data/


def test_an_interpreter_that_is_not_there_is_refused(tmp_path):
    project = tmp_path / "project"
    finished = run_setup(project, tmp_path / "python3.99")
    assert finished.returncode != 0
    assert f"{tmp_path / 'python3.99'} is not found, or does not run" in finished.stderr and ADVICE in finished.stderr
    assert files_under(project) == ["requirements.txt", "setup.sh"]


def test_an_existing_venv_of_an_old_python_is_refused_untouched(tmp_path):
    project = tmp_path / "project"
    fake_python(project / ".venv" / "bin" / "python", "3.9.18")
    finished = run_setup(project, fake_python(tmp_path / "python", "3.12.1"))
    assert finished.returncode != 0
    assert finished.stderr.splitlines() == ["setup: Python 3.11 or newer is needed; .venv/bin/python is 3.9.18. "
                                            f"Remove .venv, install a newer Python and run {ADVICE}"]
    assert files_under(project) == [".venv", ".venv/bin", ".venv/bin/python", "requirements.txt", "setup.sh"]
