"""The shell scripts of the speed work: SageAttention 2's source pack (its build needs nvcc and a Hopper GPU: the
lead's call, docs/PERFORMANCE.md) and the GPU calls' usage."""
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=REPO):
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def sage_clone(tmp_path):
    """A stand-in for a clone of SageAttention: the folders `pack` takes, and others it must leave behind."""
    src = tmp_path / "SageAttention"
    for path in ("csrc/qattn/pybind_sm90.cpp", "csrc/fused/fused.cu", "sageattention/__init__.py", "LICENSE",
                 "assets/big.png", "example/demo.py"):
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "source"]):
        subprocess.run(git + command, check=True)
    return src


def test_sage2_pack_takes_the_kernel_source_and_license_only(tmp_path, sage_clone):
    out = tmp_path / "pack"
    done = run(REPO / "scripts/sage2_build.sh", "pack", out, sage_clone / ".git")
    assert done.returncode == 0, done.stderr
    with tarfile.open(out / "sageattention-src.tar.gz") as archive:
        names = {name.rstrip("/") for name in archive.getnames()}
    assert {"csrc/qattn/pybind_sm90.cpp", "csrc/fused/fused.cu", "sageattention/__init__.py", "LICENSE"} <= names
    assert not any(name.startswith(("assets", "example")) for name in names)
    assert len((out / "sageattention-src.commit").read_text().strip()) == 40


@pytest.mark.parametrize("script, args", [("scripts/sage2_build.sh", ["install", "only-one"]),
                                          ("scripts/sage2_build.sh", ["unpack", "x"]),
                                          ("benchmarks/speed_calls.sh", ["stage", "x"]),
                                          ("benchmarks/speed_calls.sh", ["d"])])
def test_scripts_print_their_usage_on_bad_arguments(script, args):
    done = run(REPO / script, *args)
    assert done.returncode == 2 and f"bash {script} " in done.stderr


def test_sage2_build_and_install_name_the_missing_step(tmp_path):
    build = run(REPO / "scripts/sage2_build.sh", "build", tmp_path)
    assert build.returncode == 1 and "run 'pack' first" in build.stderr
    install = run(REPO / "scripts/sage2_build.sh", "install", tmp_path, tmp_path / "site")
    assert install.returncode == 1 and "run 'build' first" in install.stderr
