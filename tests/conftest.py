"""Shared fixtures. ``comfy`` installs the ComfyUI fakes from ``comfy_stubs.py`` into ``sys.modules``.

The repo root is a ComfyUI custom-node package (``__init__.py`` imports ComfyUI). pytest (>= 8) would import it
while setting up the ``Package`` node for the rootdir, so the rootdir is collected as a plain ``Dir`` instead
(see ``_RootIsNotAPackage``); keep ``tests/`` without an ``__init__.py``.
"""
from __future__ import annotations

import os
import sys

from unittest import mock

import pytest
import torch

# Triton kernels run on CPU tensors through Triton's interpreter (tests/test_fused_ops.py). Triton reads the switch when
# it is imported (torch.compile imports it), so it is set before any test runs; only on machines without a GPU, where
# no kernel would run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import comfy_stubs  # noqa: E402
# Session-wide tiny checkpoints, shared by every test module (registered here rather than imported per file).
from tiny_fixtures import tiny_dir, tiny_ibq_dir, tiny_model  # noqa: E402,F401

STUB_MODULE_NAMES = ("comfy_api", "comfy_api.latest", "comfy_api.latest._io", "comfy_api.latest._ui", "comfy",
                     "comfy.model_management", "comfy.model_patcher", "comfy.utils", "folder_paths", "server")


class _RootIsNotAPackage:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == parent.config.rootpath and (path / "__init__.py").is_file():
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("ursa-root-is-not-a-package"):
        config.pluginmanager.register(_RootIsNotAPackage(), "ursa-root-is-not-a-package")


class ComfyFixture:
    """Handle returned by the ``comfy`` fixture."""

    def __init__(self, state: comfy_stubs.ComfyStubState, modules: dict):
        self.state, self.modules = state, modules

    progress_updates = property(lambda self: self.state.progress_updates)
    node_texts = property(lambda self: self.state.node_texts)
    loaded_models = property(lambda self: self.state.loaded_models)
    load_calls = property(lambda self: self.state.load_calls)
    patchers = property(lambda self: self.state.patchers)
    output_dir = property(lambda self: self.state.output_dir)
    input_dir = property(lambda self: self.state.input_dir)
    temp_dir = property(lambda self: self.state.temp_dir)
    models_dir = property(lambda self: self.state.models_dir)

    def request_interrupt(self) -> None:
        """As if POST /interrupt arrived now: the next ProgressBar update / explicit check raises."""
        self.state.request_interrupt()

    def interrupt_after(self, n_updates: int) -> None:
        """Interrupt once ``n_updates`` progress updates were reported (update ``n_updates + 1`` raises)."""
        self.state.interrupt_after(n_updates)

    @property
    def InterruptProcessingException(self):  # noqa: N802 - mirrors the ComfyUI name
        return self.modules["comfy.model_management"].InterruptProcessingException

    @property
    def io(self):
        return self.modules["comfy_api.latest"].io

    @property
    def ui(self):
        return self.modules["comfy_api.latest"].ui

    validate = staticmethod(comfy_stubs.validate_node_inputs)
    run = staticmethod(comfy_stubs.run_node)


@pytest.fixture
def comfy(tmp_path):
    """Install fake ComfyUI modules for one test; modules imported under them are dropped afterwards."""
    state = comfy_stubs.ComfyStubState(tmp_path / "comfy")
    modules = comfy_stubs.build_modules(state)
    before = set(sys.modules)
    # patch.dict restores sys.modules on teardown; that also drops plugin modules imported during the test,
    # so no later test sees a plugin module bound to this test's fakes.
    with mock.patch.dict(sys.modules, modules):
        yield ComfyFixture(state, modules)
        torch_parts = {name: module for name, module in sys.modules.items()
                       if name not in before and name.split(".")[0] in ("torch", "psutil")}
    # ...except torch's own submodules (a first torch.compile imports dynamo and inductor) and psutil: they register
    # global state once per process, and importing them again fails (psutil: KeyError 'psutil' in a later test).
    sys.modules.update(torch_parts)


@pytest.fixture(scope="module")
def ursa_cache(tmp_path_factory):
    """One $URSA_CACHE for a whole test module, so `--model tiny` builds its checkpoint once per module."""
    cache = tmp_path_factory.mktemp("ursa_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("URSA_CACHE", str(cache))
        mp.delenv("XDG_CACHE_HOME", raising=False)
        yield cache
