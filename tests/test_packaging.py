"""The package installs: the wheel holds every subpackage and the `ursa` command, the version has one home,
requirements.txt and pyproject.toml agree, and the README's Python example runs as written."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import ursa_core

ROOT = Path(__file__).resolve().parents[1]
BUILD_SKIP = ("build", ".git", ".venv", "out", "models", ".ci-cache", ".pytest_cache", "__pycache__", "*.egg-info")


def requirement_names(lines):
    return sorted(re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
                  for line in lines if line.strip() and not line.lstrip().startswith("#"))


def test_requirements_txt_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(project["dependencies"])
    assert "torch" not in requirement_names(listed)  # ComfyUI users keep their own build
    assert {"accelerate", "einops", "imageio", "imageio-ffmpeg"}.isdisjoint(requirement_names(listed))


def test_version_has_one_home(capsys):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ursa_core.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", ursa_core.__version__)
    from ursa_core import cli
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ursa {ursa_core.__version__}"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """Build the wheel offline from a copy of the sources and install it (no deps) into a bare folder."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = shutil.copytree(ROOT, tmp / "src", ignore=shutil.ignore_patterns(*BUILD_SKIP))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("ursa_video-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return wheel, tmp / "site"


def test_wheel_holds_every_subpackage(installed_wheel):
    wheel, site = installed_wheel
    assert wheel.name.startswith(f"ursa_video-{ursa_core.__version__}-")
    sources = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "ursa_core").rglob("__init__.py")}
    assert {"ursa_core", "ursa_core/visual_tokenizer", "ursa_core/cli"} <= sources
    for package in sources:
        assert (site / package / "__init__.py").is_file(), package
    assert not (site / "nodes").exists() and not (site / "tests").exists()


def test_installed_package_runs_from_another_folder(installed_wheel, tmp_path):
    _, site = installed_wheel
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import ursa_core, ursa_core.visual_tokenizer, ursa_core.cli; "
                            "print(ursa_core.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(site)
    version = subprocess.run([str(site / "bin" / "ursa"), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ursa {ursa_core.__version__}"


def test_installed_ursa_without_torch_helps_and_names_torch(installed_wheel, tmp_path):
    """`pip install` in a Python without torch (tests/no_torch blocks it): help and version work, a command says in
    one line that torch is needed and how to get it (issue 17)."""
    _, site = installed_wheel
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "no_torch"), str(site)]))
    for args in (["--version"], ["--help"], ["generate", "--help"], ["batch", "--help"]):
        result = subprocess.run([str(site / "bin" / "ursa"), *args], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and result.stderr == "" and result.stdout, (args, result.stderr)
    result = subprocess.run([str(site / "bin" / "ursa"), "make-tiny", "x"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "needs PyTorch, which is not installed here" in result.stderr and list(tmp_path.iterdir()) == []


# --- the README's Python examples ---------------------------------------------------------------------------------


def readme_python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README shows the library in Python"
    return blocks


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_block_runs_as_written(tmp_path, monkeypatch, ursa_cache, index):
    """Every ```python block of the README, unchanged, in a fresh folder on the CPU (issue 17: `load("tiny")` was
    refused as "model folder not found: tiny")."""
    from ursa_core.files.media import count_video_frames

    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python_blocks()[index], f"README.md python block {index}", "exec"), namespace)
    videos = list(tmp_path.rglob("*.mp4"))
    assert videos and all(count_video_frames(v) == len(namespace["frames"]) for v in videos)


def test_load_tiny_is_the_clis_tiny_checkpoint(ursa_cache):
    from ursa_core.checkpoint.tiny import TINY_CACHE_NAME

    model = ursa_core.load("tiny")
    assert model.folder == ursa_cache / TINY_CACHE_NAME and model.geometry.spatial_stride == 8
