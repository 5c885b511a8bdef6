"""URSASaveTokens / URSALoadTokens: keep sampled tokens as safetensors so a failed decode loses no sampling."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ursa_core.errors import InputError
from ursa_core.files.contained import annotated_name, list_contained, resolve_contained
from ursa_core.files.token_io import TokenClip, load_tokens, save_tokens

from . import glue
from .types import URSATokens

SUBFOLDER_HINT = "ursa_tokens"
TOKEN_FILE_UI_KEY = "ursa_token_file"  # the UI output web/js/ursa.js adds to URSA Load Tokens' list
TOKEN_SUFFIX = ".safetensors"


def token_roots() -> dict[str, str]:
    """The only folders URSA Load Tokens reads from."""
    return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory()}


def token_files() -> list[str]:
    """*.safetensors inside ComfyUI's input folder, plus the output folder's with the ' [output]' annotation."""
    return list_contained(token_roots(), TOKEN_SUFFIX)


def token_path(token_file: str):
    """The contained real path of a listed name, or None (outside the folders, escaping symlink, missing)."""
    return resolve_contained(token_file, token_roots(), TOKEN_SUFFIX)


class URSASaveTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSASaveTokens", display_name="URSA Save Tokens", category="URSA/tokens",
            description="Writes tokens to ComfyUI's output folder as .safetensors (with their fps and shape) and "
                        "shows the saved name on the node. URSA Load Tokens lists it at once: load it later to "
                        "decode again without sampling again.",
            inputs=[
                URSATokens.Input("tokens", tooltip="Tokens to keep."),
                io.String.Input("filename_prefix", default=f"{SUBFOLDER_HINT}/URSA",
                                tooltip="Output path prefix; a counter and .safetensors are appended."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The same tokens, passed through (so a decode "
                                                                      "can follow the save).")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, tokens, filename_prefix) -> io.NodeOutput:
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        path = save_tokens(tokens.tokens, os.path.join(folder, f"{name}_{counter:05}_.safetensors"),
                           identity=tokens.identity, fps=tokens.fps, shape=list(tokens.tokens.shape))
        entry = annotated_name(f"{subfolder}/{path.name}" if subfolder else path.name, "output")
        glue.NodeText(cls.hidden.unique_id, f"saved {entry}").show()
        # "text" for the history; "ursa_token_file" is read by web/js/ursa.js to list the file in URSA Load Tokens.
        return io.NodeOutput(tokens, ui={"text": [f"saved {entry}"], TOKEN_FILE_UI_KEY: [entry]})


class URSALoadTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSALoadTokens", display_name="URSA Load Tokens", category="URSA/tokens",
            description="Reads tokens written by URSA Save Tokens from the input folder (or the output folder, "
                        "entries marked [output]).",
            inputs=[io.Combo.Input("token_file", options=token_files(),
                                   tooltip="A .safetensors token file in input/ (or output/, marked [output]).")],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The loaded tokens and their frame rate: decode "
                                                                      "with URSA Tokenizer Decode or extend with URSA "
                                                                      "Extend Video.")],
        )

    @classmethod
    def validate_inputs(cls, token_file=None):
        # The same answer for a missing file and for any name outside input/ and output/: nothing is revealed.
        if token_file is not None and token_path(token_file) is None:
            return (f"token file {token_file!r} is not one of the .safetensors files in ComfyUI's input or output "
                    f"folder; pick one from the list")
        return True

    @classmethod
    def fingerprint_inputs(cls, token_file=None):
        path = token_path(token_file)
        return None if path is None else os.path.getmtime(path)

    @classmethod
    def execute(cls, token_file) -> io.NodeOutput:
        path = token_path(token_file)
        if path is None:  # validate_inputs ran first; the file went away since
            raise InputError(f"token file {token_file!r} is no longer in ComfyUI's input or output folder")
        tokens, meta = load_tokens(path, shown=token_file)
        return io.NodeOutput(TokenClip(tokens, float(meta.get("fps", 12.0)), meta.get("tokenizer")))
