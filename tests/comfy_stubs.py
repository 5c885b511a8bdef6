"""Minimal, faithful stand-ins for the parts of ComfyUI (0.8.0) that the URSA nodes import.

Installed into ``sys.modules`` by the ``comfy`` fixture in ``conftest.py`` (never import this module's fakes
directly from plugin code). Names and signatures mirror ComfyUI 0.8.0 (upstream 3cd7b32f); the behaviour kept is
what our tests rely on:

* ``comfy_api.latest``: ``ComfyExtension``, ``io`` (``ComfyNode``, ``Schema``, ``NodeOutput``, ``Custom``, ``Int``,
  ``Float``, ``String``, ``Boolean``, ``Combo``, ``Image``, ``Mask``, ``Latent``, ``Model``, ``Video``, ``Audio``,
  ``AnyType``, ``Hidden``, ``HiddenHolder``, ``FolderType``, ``UploadType``, ``NumberDisplay``), ``ui``
  (``PreviewImage``, ``PreviewMask``, ``PreviewVideo``, ``PreviewText``, ``SavedResult``, ``SavedImages``,
  ``ImageSaveHelper``). Inputs keep every keyword (default/min/max/step/tooltip/options...), ``as_dict()`` drops
  ``None`` values like core, and ``ComfyNode.INPUT_TYPES()/RETURN_TYPES`` are derived from the schema.
* ``comfy.utils.ProgressBar`` with the global hook behaviour of ``main.py``: every update first checks the
  interrupt flag (raises ``InterruptProcessingException``), then is recorded.
* ``comfy.model_management``: devices (all CPU), ``load_models_gpu`` (recorded; like core it needs ModelPatcher-like
  objects), interrupt functions, ``OOM_EXCEPTION``.
* ``comfy.model_patcher.ModelPatcher``: records model / load_device / offload_device.
* ``folder_paths``: model folders, input/output/temp directories under the fixture's tmp dir, ``get_save_image_path``.
* ``server.PromptServer.instance.send_progress_text``: the text the frontend draws on a node, recorded.

Extra test helpers (not in ComfyUI): ``validate_node_inputs`` mimics ``execution.validate_inputs`` (including the
trap that inputs named by ``validate_inputs`` skip core's min/max/COMBO checks), ``run_node`` executes a node the
way core does (class clone + ``cls.hidden``, NodeOutput normalisation).
"""
from __future__ import annotations

import copy
import inspect
import os
import random
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["ComfyStubState", "build_modules", "validate_node_inputs", "run_node"]


# --------------------------------------------------------------------------------------------- shared state
class ComfyStubState:
    """What the fakes record; returned (wrapped) by the ``comfy`` fixture."""

    def __init__(self, base_dir: str):
        self.base_dir = str(base_dir)
        self.output_dir = os.path.join(self.base_dir, "output")
        self.input_dir = os.path.join(self.base_dir, "input")
        self.temp_dir = os.path.join(self.base_dir, "temp")
        self.models_dir = os.path.join(self.base_dir, "models")
        for d in (self.output_dir, self.input_dir, self.temp_dir, self.models_dir):
            os.makedirs(d, exist_ok=True)
        self.progress_updates: list[dict] = []   # {"value", "total", "preview", "node_id"}
        self.loaded_models: list[Any] = []       # every model passed to load_models_gpu, in order
        self.load_calls: list[dict] = []         # kwargs of each load_models_gpu call
        self.patchers: list[Any] = []            # every ModelPatcher constructed
        self.interrupt_flag = False
        self.interrupt_after_updates: int | None = None
        self.node_texts: list[tuple[str, str]] = []  # (node_id, text) of every progress text, in order

    def request_interrupt(self) -> None:
        """Like POST /interrupt: the next progress update or explicit check raises."""
        self.interrupt_flag = True

    def interrupt_after(self, n_updates: int) -> None:
        """Set the interrupt flag once ``n_updates`` progress updates have been recorded (so update n+1 raises)."""
        self.interrupt_after_updates = n_updates
        if len(self.progress_updates) >= n_updates:
            self.interrupt_flag = True


# --------------------------------------------------------------------------------------------- comfy_api io
def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """``cls.hidden`` during execution; unknown attributes read as None (as in core)."""

    def __init__(self, unique_id=None, prompt=None, extra_pnginfo=None, dynprompt=None,
                 auth_token_comfy_org=None, api_key_comfy_org=None, **kwargs):
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        self.auth_token_comfy_org = auth_token_comfy_org
        self.api_key_comfy_org = api_key_comfy_org

    def __getattr__(self, key):
        return None

    @classmethod
    def from_dict(cls, d: dict | None):
        d = d or {}
        return cls(**{h.name: d.get(h, d.get(h.name)) for h in Hidden})


class _IO:
    Parent: Any = None

    @property
    def io_type(self):
        return self.Parent.io_type

    def validate(self):
        pass


class Input(_IO):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None, raw_link: bool = None):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy, self.rawLink = tooltip, lazy, raw_link
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self):
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy, "rawLink": self.rawLink}) | _prune(self.extra_dict)

    def get_io_type(self):
        return self.io_type

    def get_all(self):
        return [self]


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self):
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self):
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO):
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name if display_name else id
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self):
        return _prune({"display_name": self.display_name or self.id, "tooltip": self.tooltip,
                       "is_output_list": self.is_output_list})

    def get_io_type(self):
        return self.io_type


class ComfyTypeIO:
    Type = Any
    io_type: str = None

    class Input(Input):
        pass

    class Output(Output):
        pass


def comfytype(io_type: str):
    """Bind ``io_type`` and give the type its own Input/Output subclasses whose ``Parent`` is the type."""
    def deco(cls):
        cls.io_type = io_type
        for name in ("Input", "Output"):
            inner = cls.__dict__.get(name) or getattr(cls, name, None)
            if inner is not None:
                sub = type(inner.__name__, (inner,), {"Parent": cls, "__qualname__": f"{cls.__name__}.{name}"})
                setattr(cls, name, sub)
        return cls
    return deco


def Custom(io_type: str) -> type:
    """Create a ComfyType for a custom io_type, e.g. ``io.Custom("URSA_TOKENS")``."""
    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        pass
    return CustomComfyType


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: bool = None, label_on: str = None, label_off: str = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self):
            return super().as_dict() | _prune({"label_on": self.label_on, "label_off": self.label_off})


@comfytype("INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode: NumberDisplay = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

        def as_dict(self):
            return super().as_dict() | _prune({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: float = None, min: float = None, max: float = None, step: float = None,
                     round: float = None, display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self):
            return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                               "round": self.round, "display": self.display_mode})


@comfytype("STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self):
            return super().as_dict() | _prune({"multiline": self.multiline, "placeholder": self.placeholder,
                                               "dynamicPrompts": self.dynamic_prompts})


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options=None, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default=None, control_after_generate: bool = None, upload: UploadType = None,
                     image_folder: FolderType = None, remote=None, socketless: bool = None, extra_dict=None,
                     raw_link: bool = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                             extra_dict, raw_link)
            self.multiselect = False
            self.options, self.control_after_generate, self.upload = options, control_after_generate, upload
            self.image_folder, self.remote = image_folder, remote

        def as_dict(self):
            return super().as_dict() | _prune({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None})

    class Output(Output):
        def __init__(self, id: str = None, display_name: str = None, options: list = None, tooltip: str = None,
                     is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []


def _plain_type(name: str, io_type: str):
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {}))


Image = _plain_type("Image", "IMAGE")
Mask = _plain_type("Mask", "MASK")
Latent = _plain_type("Latent", "LATENT")
Conditioning = _plain_type("Conditioning", "CONDITIONING")
Model = _plain_type("Model", "MODEL")
Vae = _plain_type("Vae", "VAE")
Video = _plain_type("Video", "VIDEO")
Audio = _plain_type("Audio", "AUDIO")
Sigmas = _plain_type("Sigmas", "SIGMAS")
AnyType = _plain_type("AnyType", "*")


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        """Core raises ValueError on duplicate input ids or duplicate output ids."""
        problems = []
        for what, ids in (("Input", [i.id for i in self.inputs]), ("Output", [o.id for o in self.outputs])):
            dup = sorted({x for x in ids if ids.count(x) > 1}, key=str)
            if dup:
                problems.append(f"{what} ids must be unique, but {dup} are not.")
        if problems:
            raise ValueError("\n".join(problems))

    def finalize(self):
        """Output nodes get hidden PROMPT + EXTRA_PNGINFO; outputs without id get ``_{i}_{TYPE}_``."""
        self.inputs, self.outputs, self.hidden = self.inputs or [], self.outputs or [], self.hidden or []
        if self.is_output_node:
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, o in enumerate(self.outputs):
            if o.id is None:
                o.id = f"_{i}_{o.io_type}_"

    def input_by_id(self, input_id: str):
        """Test helper (not in core): the Input object with this id."""
        for i in self.inputs:
            if i.id == input_id:
                return i
        raise KeyError(input_id)


class _UIOutput(ABC):
    @abstractmethod
    def as_dict(self) -> dict:
        ...


class NodeOutput:
    def __init__(self, *args: Any, ui: _UIOutput | dict = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index):
        return self.args[index]


class _classproperty:
    def __init__(self, f):
        self.f = f

    def __get__(self, obj, owner):
        return self.f(owner)


class ComfyNode:
    """V3 node base: all hooks are classmethods; placeholders raise NotImplementedError like core."""
    hidden: HiddenHolder = None
    SCHEMA = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs):
        return [name for name in kwargs if kwargs[name] is None]

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        for name in ("define_schema", "execute"):
            if _override(cls, name) is None:
                raise Exception(f"No {name} function was defined for node class {cls.__name__}.")
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        schema = cls.GET_SCHEMA()
        d: dict = {"required": {}}
        for i in schema.inputs:
            spec = i.as_dict()
            spec.pop("optional", None)
            d.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), spec)
        for h in schema.hidden:
            d.setdefault("hidden", {})[h.name] = (h.value,)
        return d

    @_classproperty
    def RETURN_TYPES(cls):
        return tuple(o.io_type for o in cls.GET_SCHEMA().outputs)

    @_classproperty
    def RETURN_NAMES(cls):
        return tuple(o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs)

    @_classproperty
    def OUTPUT_NODE(cls):
        return cls.GET_SCHEMA().is_output_node

    @_classproperty
    def CATEGORY(cls):
        return cls.GET_SCHEMA().category

    @_classproperty
    def NOT_IDEMPOTENT(cls):
        return cls.GET_SCHEMA().not_idempotent


def _override(cls, name):
    """Like comfy_api.internal.first_real_override: the subclass override of ``name`` or None."""
    base_func = getattr(ComfyNode, name).__func__
    for c in cls.mro():
        if c is ComfyNode:
            break
        if name in c.__dict__ and getattr(c, name).__func__ is not base_func:
            return getattr(cls, name)
    return None


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Exists in 0.8.0's class but is NOT called by 0.8.0's loader (nodes.py)."""

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


# --------------------------------------------------------------------------------------------- helpers
_NUMERIC = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _error(kind: str, message: str, details: str, input_name: str) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": input_name}}


def validate_node_inputs(node_cls, inputs: dict) -> list[dict]:
    """Return core-style error dicts for an API-format ``inputs`` dict (links = ``[node_id, slot]`` lists).

    Mirrors 0.8.0 ``execution.validate_inputs`` (type, message, details, and ``extra_info.input_name``: the widget
    the frontend marks red): required present, value conversion, min/max and COMBO checks (skipped for inputs named
    in ``validate_inputs`` or for all inputs if it takes ``**kwargs``), then the custom validator with the constant
    inputs (linked ones arrive as None); a non-True return is one ``custom_validation_failed`` per named input.
    """
    schema = node_cls.GET_SCHEMA()
    errors, inputs = [], dict(inputs)
    fn = _override(node_cls, "validate_inputs")
    spec = inspect.getfullargspec(fn) if fn else None
    named, has_kw = (spec.args if spec else []), bool(spec and spec.varkw)
    for i in schema.inputs:
        if i.id not in inputs:
            if not i.optional:
                errors.append(_error("required_input_missing", "Required input is missing", i.id, i.id))
            continue
        val = inputs[i.id]
        if isinstance(val, list):
            continue
        io_type = i.get_io_type()
        try:
            if io_type in _NUMERIC:
                val = inputs[i.id] = _NUMERIC[io_type](val)
        except Exception as ex:  # noqa: BLE001 - core reports any conversion failure
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {io_type} value",
                                 f"{i.id}, {val}, {ex}", i.id))
            continue
        if i.id in named or has_kw:
            continue
        if getattr(i, "min", None) is not None and val < i.min:  # core's comparisons, in core's order
            errors.append(_error("value_smaller_than_min", f"Value {val} smaller than min of {i.min}", i.id, i.id))
        elif getattr(i, "max", None) is not None and val > i.max:
            errors.append(_error("value_bigger_than_max", f"Value {val} bigger than max of {i.max}", i.id, i.id))
        elif io_type == "COMBO" and val not in (i.options or []):
            errors.append(_error("value_not_in_list", "Value not in list", f"{i.id}: '{val}' not in {i.options}",
                                 i.id))
    if fn is not None:
        args = {k: (None if isinstance(v, list) else v) for k, v in inputs.items() if k in named or has_kw}
        try:
            ret = fn(**args)
        except Exception as ex:  # core: validate_prompt replaces all reasons by this one
            return [{"type": "exception_during_validation", "message": "Exception when validating node",
                     "details": str(ex), "extra_info": {}}]
        if ret is not True:
            for k in args:
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     k + ("" if ret is False else f" - {ret}"), k))
    return errors


def run_node(node_cls, hidden: dict | None = None, **inputs) -> NodeOutput:
    """Execute a V3 node like core: fresh class clone with ``cls.hidden`` set, result normalised to NodeOutput."""
    node_cls.GET_SCHEMA()
    clone = type(node_cls.__name__, (node_cls,), {"hidden": HiddenHolder.from_dict(hidden)})
    out = clone.execute(**inputs)
    if inspect.iscoroutine(out):
        import asyncio
        out = asyncio.run(_await(out))
    if out is None:
        out = NodeOutput()
    elif isinstance(out, tuple):
        out = NodeOutput(*out)
    elif not isinstance(out, NodeOutput):
        raise Exception(f"Invalid return type from node: {type(out)}")
    if out.expand is not None and not node_cls.SCHEMA.enable_expand:
        raise Exception(f"Node {node_cls.__name__} is not expandable, but expand included in NodeOutput")
    return out


async def _await(coro):
    return await coro


# --------------------------------------------------------------------------------------------- module builders
def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _build_model_management(state: ComfyStubState):
    import torch

    class InterruptProcessingException(Exception):
        pass

    def cpu(*_a, **_k):
        return torch.device("cpu")

    def interrupt_current_processing(value=True):
        state.interrupt_flag = bool(value)

    def processing_interrupted():
        return state.interrupt_flag

    def throw_exception_if_processing_interrupted():
        if state.interrupt_flag:
            state.interrupt_flag = False
            raise InterruptProcessingException()

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        for m in models:  # core calls these on every entry: a bare nn.Module fails there too
            for attr in ("load_device", "model_size", "model_patches_models", "is_clone", "model_dtype"):
                if not hasattr(m, attr):
                    raise AttributeError(f"'{type(m).__name__}' object has no attribute '{attr}' "
                                         "(load_models_gpu needs ModelPatcher objects)")
        state.loaded_models.extend(models)
        state.load_calls.append({"models": list(models), "memory_required": memory_required,
                                 "minimum_memory_required": minimum_memory_required,
                                 "force_full_load": force_full_load})

    def module_size(module):
        return sum(t.nbytes for t in module.state_dict().values())

    class VRAMState(Enum):  # as core; on a CPU-only machine core sets DISABLED
        DISABLED = 0
        NO_VRAM = 1
        LOW_VRAM = 2
        NORMAL_VRAM = 3
        HIGH_VRAM = 4
        SHARED = 5

    return _module(
        "comfy.model_management", VRAMState=VRAMState, vram_state=VRAMState.DISABLED,
        InterruptProcessingException=InterruptProcessingException,
        OOM_EXCEPTION=getattr(torch.cuda, "OutOfMemoryError", Exception),
        get_torch_device=cpu, intermediate_device=cpu, unet_offload_device=cpu, text_encoder_device=cpu,
        text_encoder_offload_device=cpu, vae_device=cpu, vae_offload_device=cpu,
        load_models_gpu=load_models_gpu, load_model_gpu=lambda model: load_models_gpu([model]),
        module_size=module_size, soft_empty_cache=lambda force=False: None, unload_all_models=lambda: None,
        free_memory=lambda memory_required, device, keep_loaded=[]: [],
        get_free_memory=lambda dev=None, torch_free_too=False: (8 << 30, 8 << 30) if torch_free_too else 8 << 30,
        is_device_cpu=lambda device: getattr(device, "type", device) == "cpu",
        interrupt_current_processing=interrupt_current_processing, processing_interrupted=processing_interrupted,
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
    )


def _build_model_patcher(state: ComfyStubState, mm):
    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            self.size, self.weight_inplace_update = size, weight_inplace_update
            self.parent = None
            self.model_options = {"transformer_options": {}}
            if getattr(model, "device", None) is None:  # core sets model.device = offload_device if missing/None
                model.device = offload_device
            state.patchers.append(self)

        def model_size(self):
            if self.size <= 0:
                self.size = mm.module_size(self.model)
            return self.size

        def model_dtype(self):
            return self.model.get_dtype() if hasattr(self.model, "get_dtype") else None

        def clone(self):
            n = self.__class__(self.model, self.load_device, self.offload_device, self.model_size(),
                               self.weight_inplace_update)
            n.parent, n.model_options = self, copy.deepcopy(self.model_options)
            return n

        def is_clone(self, other):
            return hasattr(other, "model") and self.model is other.model

        def model_patches_models(self):
            return []

        def current_loaded_device(self):
            return self.model.device

        def loaded_size(self):
            return 0

        def get_model_object(self, name: str):
            obj = self.model
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj

    return _module("comfy.model_patcher", ModelPatcher=ModelPatcher)


def _build_utils(state: ComfyStubState, mm):
    utils = _module("comfy.utils", PROGRESS_BAR_ENABLED=True)

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        mm.throw_exception_if_processing_interrupted()  # main.py's hook checks before reporting
        state.progress_updates.append({"value": value, "total": total, "preview": preview_image, "node_id": node_id})
        if state.interrupt_after_updates is not None and len(state.progress_updates) >= state.interrupt_after_updates:
            state.interrupt_flag = True

    utils.PROGRESS_BAR_HOOK = hook

    def set_progress_bar_global_hook(function):
        utils.PROGRESS_BAR_HOOK = function

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.node_id = total, 0, node_id
            self.hook = utils.PROGRESS_BAR_HOOK

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            if self.hook is not None:
                self.hook(self.current, self.total, preview, node_id=self.node_id)

        def update(self, value):
            self.update_absolute(self.current + value)

    def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
        import torch
        device = device or torch.device("cpu")
        metadata = None
        if str(ckpt).lower().endswith((".safetensors", ".sft")):
            from safetensors import safe_open
            with safe_open(ckpt, framework="pt", device=str(device)) as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
                metadata = f.metadata() if return_metadata else None
        else:
            sd = torch.load(ckpt, map_location=device, weights_only=True)
        return (sd, metadata) if return_metadata else sd

    utils.__dict__.update(ProgressBar=ProgressBar, set_progress_bar_global_hook=set_progress_bar_global_hook,
                          load_torch_file=load_torch_file)
    return utils


def _build_folder_paths(state: ComfyStubState):
    exts = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    md = state.models_dir
    names = {k: ([os.path.join(md, k)], set(exts)) for k in ("checkpoints", "loras", "vae", "upscale_models",
                                                               "vae_approx", "controlnet")}
    names["text_encoders"] = ([os.path.join(md, "text_encoders"), os.path.join(md, "clip")], set(exts))
    names["diffusion_models"] = ([os.path.join(md, "unet"), os.path.join(md, "diffusion_models")], set(exts))
    names["diffusers"] = ([os.path.join(md, "diffusers")], ["folder"])
    names["custom_nodes"] = ([os.path.join(state.base_dir, "custom_nodes")], set())
    legacy = {"unet": "diffusion_models", "clip": "text_encoders"}
    dirs = {"output": state.output_dir, "input": state.input_dir, "temp": state.temp_dir}
    fp = _module("folder_paths", base_path=state.base_dir, models_dir=md, supported_pt_extensions=set(exts),
                 folder_names_and_paths=names)

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        folder_name = legacy.get(folder_name, folder_name)
        if folder_name not in names:
            names[folder_name] = ([full_folder_path], set())  # new key: empty ext set = every file matches
            return
        paths = names[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        else:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return list(names[legacy.get(folder_name, folder_name)][0])  # KeyError for unknown names, like core

    def get_filename_list(folder_name: str) -> list[str]:
        folders, allowed = names[legacy.get(folder_name, folder_name)]
        found = set()
        for root in folders:
            for dirpath, subdirs, files in os.walk(root, followlinks=True):
                subdirs[:] = [d for d in subdirs if d != ".git"]
                for f in files:
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    if not allowed or os.path.splitext(rel)[1].lower() in allowed:
                        found.add(rel)
        return sorted(found)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        key = legacy.get(folder_name, folder_name)
        if key not in names:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for root in names[key][0]:
            p = os.path.join(root, filename)
            if os.path.isfile(p):
                return p
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        p = get_full_path(folder_name, filename)
        if p is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return p

    def annotated_filepath(name: str):
        for suffix, d in ((" [output]", "output"), (" [input]", "input"), (" [temp]", "temp")):
            if name.endswith(suffix):
                return name[: -len(suffix)], dirs[d]
        return name, None

    def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
        name, base = annotated_filepath(name)
        return os.path.join(base or default_dir or dirs["input"], name)

    def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
        for var, val in (("%width%", image_width), ("%height%", image_height)):
            filename_prefix = filename_prefix.replace(var, str(val))
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        full_output_folder = os.path.join(output_dir, subfolder)
        if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(full_output_folder, exist_ok=True)
        counters = [0]
        for f in os.listdir(full_output_folder):  # existing "<filename>_<5 digits>_..." files
            if f.startswith(filename + "_"):
                head = f[len(filename) + 1:].split("_")[0]
                if head.isdigit():
                    counters.append(int(head))
        return full_output_folder, filename, max(counters) + 1, subfolder, filename_prefix

    fp.__dict__.update(
        add_model_folder_path=add_model_folder_path, get_folder_paths=get_folder_paths,
        get_filename_list=get_filename_list, get_full_path=get_full_path,
        get_full_path_or_raise=get_full_path_or_raise, annotated_filepath=annotated_filepath,
        get_annotated_filepath=get_annotated_filepath,
        exists_annotated_filepath=lambda name: os.path.exists(get_annotated_filepath(name)),
        get_output_directory=lambda: dirs["output"], get_input_directory=lambda: dirs["input"],
        get_temp_directory=lambda: dirs["temp"], get_user_directory=lambda: os.path.join(state.base_dir, "user"),
        get_directory_by_type=lambda type_name: dirs.get(type_name), get_save_image_path=get_save_image_path,
        filter_files_extensions=lambda files, extensions: sorted(
            f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0),
    )
    return fp


def _build_ui(folder_paths):
    class SavedResult(dict):
        def __init__(self, filename: str, subfolder: str, type: FolderType):
            super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

        filename = property(lambda self: self["filename"])
        subfolder = property(lambda self: self["subfolder"])
        type = property(lambda self: FolderType(self["type"]))

    class SavedImages(_UIOutput):
        def __init__(self, results: list, is_animated: bool = False):
            self.results, self.is_animated = results, is_animated

        def as_dict(self):
            return {"images": self.results, **({"animated": (True,)} if self.is_animated else {})}

    def _dir(folder_type):
        return {FolderType.input: folder_paths.get_input_directory,
                FolderType.output: folder_paths.get_output_directory}.get(
            FolderType(folder_type), folder_paths.get_temp_directory)()

    class ImageSaveHelper:
        @staticmethod
        def save_images(images, filename_prefix: str, folder_type: FolderType, cls=None, compress_level=4):
            import numpy as np
            from PIL import Image as PILImage
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, _dir(folder_type), images[0].shape[1], images[0].shape[0])
            results = []
            for b, img in enumerate(images):
                arr = np.clip(255.0 * img.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
                file = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.png"
                PILImage.fromarray(arr).save(os.path.join(folder, file), compress_level=compress_level)
                results.append(SavedResult(file, subfolder, folder_type))
                counter += 1
            return results

        @staticmethod
        def get_save_images_ui(images, filename_prefix: str, cls=None, compress_level=4):
            return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls,
                                                           compress_level))

    class PreviewImage(_UIOutput):
        """Like core: saves PNGs into the temp dir *at construction* (prefix ComfyUI_temp_xxxxx)."""

        def __init__(self, image, animated: bool = False, cls=None, **kwargs):
            prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
            self.values = ImageSaveHelper.save_images(image, prefix, FolderType.temp, cls, compress_level=1)
            self.animated = animated

        def as_dict(self):
            return {"images": self.values, "animated": (self.animated,)}

    class PreviewMask(PreviewImage):
        def __init__(self, mask, animated: bool = False, cls=None, **kwargs):
            preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
            super().__init__(preview, animated, cls, **kwargs)

    class PreviewVideo(_UIOutput):
        def __init__(self, values: list, **kwargs):
            self.values = values

        def as_dict(self):
            return {"images": self.values, "animated": (True,)}

    class PreviewText(_UIOutput):
        def __init__(self, value: str, **kwargs):
            self.value = value

        def as_dict(self):
            return {"text": (self.value,)}

    return dict(SavedResult=SavedResult, SavedImages=SavedImages, ImageSaveHelper=ImageSaveHelper,
                PreviewImage=PreviewImage, PreviewMask=PreviewMask, PreviewVideo=PreviewVideo,
                PreviewText=PreviewText)


_IO_NAMES = ["FolderType", "UploadType", "NumberDisplay", "comfytype", "Custom", "Input", "WidgetInput", "Output",
             "ComfyTypeIO", "Boolean", "Int", "Float", "String", "Combo", "Image", "Mask", "Latent", "Conditioning",
             "Model", "Vae", "Video", "Audio", "Sigmas", "AnyType", "Hidden", "HiddenHolder", "Schema", "ComfyNode",
             "NodeOutput"]


def _build_server(state: ComfyStubState):
    """``server.PromptServer.instance.send_progress_text`` (the text the frontend draws on a node), recorded."""
    class PromptServer:
        instance = None

        def send_progress_text(self, text, node_id, sid=None):
            state.node_texts.append((str(node_id), text.decode("utf-8") if isinstance(text, bytes) else text))

    PromptServer.instance = PromptServer()
    return _module("server", PromptServer=PromptServer)


def build_modules(state: ComfyStubState) -> dict[str, types.ModuleType]:
    """All fake modules keyed by their import name, ready for ``mocker.patch.dict(sys.modules, ...)``."""
    g = globals()
    io = _module("comfy_api.latest._io", **{n: g[n] for n in _IO_NAMES}, _UIOutput=_UIOutput)
    fp = _build_folder_paths(state)
    ui = _module("comfy_api.latest._ui", **_build_ui(fp))
    latest = _module("comfy_api.latest", ComfyExtension=ComfyExtension, io=io, ui=ui, IO=io, UI=ui)
    latest.__path__ = []  # a package, so "comfy_api.latest._io" style imports resolve
    api = _module("comfy_api", latest=latest)
    api.__path__ = []
    mm = _build_model_management(state)
    comfy = _module("comfy", model_management=mm)
    comfy.__path__ = []
    mp = _build_model_patcher(state, mm)
    utils = _build_utils(state, mm)
    comfy.model_patcher, comfy.utils = mp, utils
    return {"comfy_api": api, "comfy_api.latest": latest, "comfy_api.latest._io": io, "comfy_api.latest._ui": ui,
            "comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": mp, "comfy.utils": utils,
            "folder_paths": fp, "server": _build_server(state)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("import this module from tests (see conftest.py)")
