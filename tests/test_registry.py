"""Registry readiness: [tool.comfy] fields, the icon they point at, the version read from its one place."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import release_version  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RAW_PREFIX = "https://raw.githubusercontent.com/"


def test_tool_comfy_complete_and_icon_committed():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["web"] == "web"
    assert comfy["requires-comfyui"].startswith(">=")
    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    icon = comfy["Icon"]
    assert icon.startswith(f"{RAW_PREFIX}{repo}/main/"), icon  # served from the repository itself
    path = ROOT / icon.removeprefix(f"{RAW_PREFIX}{repo}/main/")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 50_000, path
    from PIL import Image
    assert Image.open(path).size == (256, 256)
    for model in comfy["Models"]:
        assert model["location"].startswith("/ursa/") and model["model_url"].startswith("https://huggingface.co/")


def test_version_from_one_place_both_layouts():
    static = '[project]\nname = "x"\nversion = "1.2.3"\n'
    assert release_version.version_from(static, None) == "1.2.3"
    dynamic = '[project]\nname = "x"\ndynamic = ["version"]  # from ursa_core\n'
    init = '"""doc"""\n__version__ = "0.4.0"  # the one place\n'
    assert release_version.version_from(dynamic, init) == "0.4.0"
    stamped = release_version.stamp(dynamic, "0.4.0")
    assert tomllib.loads(stamped)["project"]["version"] == "0.4.0" and "dynamic" not in stamped
    assert release_version.stamp(static, "1.2.3") == static
    with pytest.raises(ValueError, match="X.Y.Z"):
        release_version.version_from('[project]\nversion = "1.2"\n', None)
    with pytest.raises(ValueError, match="__version__"):
        release_version.version_from(dynamic, "VERSION = '1'\n")


def test_version_cli_reads_this_repo():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "release_version.py")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == release_version.version_at()


def test_publish_workflow_publishes_only_a_changed_version():
    text = (ROOT / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8")
    assert "release_version.py --changed-since HEAD~1" in text and "release_version.py --stamp" in text
    assert "comfy node publish" in text and "secrets.REGISTRY_ACCESS_TOKEN" in text
    assert "version =" not in text  # no version written here
