// URSA Video in ComfyUI's frontend, two small helpers the node definitions ask for:
// 1. URSA Frame Schedule shows an input only in the modes that read it: the input's "ursa_modes" option in the
//    node definition lists them (given_frames: extension; keyframes: custom keyframes). The widgets stay in the
//    node and in saved workflows (their order is a promise to saved files); only their visibility follows the mode.
// 2. A file written by URSA Save Tokens is listed by every URSA Load Tokens at once, as core's image upload adds
//    its file to Load Image's list: the save node's "ursa_token_file" UI output is the exact list entry. A Load
//    Tokens added later lists it too (the node definition's list is the one new nodes start from).
import { app } from "../../../scripts/app.js"; // served at /extensions/<pack>/js/ursa.js

const MODE_OPTION = "ursa_modes";
const TOKEN_FILE_OUTPUT = "ursa_token_file";
const modeInputs = {}; // node type -> {input name: [modes that read it]}

function showInputsOfMode(node) {
  const inputs = modeInputs[node.comfyClass];
  const mode = node.widgets?.find((w) => w.name === "mode")?.value;
  if (!inputs || mode === undefined) return;
  let changed = false;
  for (const widget of node.widgets) {
    if (!(widget.name in inputs)) continue;
    const hidden = !inputs[widget.name].includes(mode);
    changed ||= widget.hidden !== hidden;
    widget.hidden = hidden;
  }
  if (changed) {
    node.setSize([node.size[0], node.computeSize()[1]]);
    node.setDirtyCanvas(true, true);
  }
}

function followMode(node) {
  const mode = node.widgets?.find((w) => w.name === "mode");
  if (!mode || !(node.comfyClass in modeInputs)) return;
  const callback = mode.callback;
  mode.callback = function (...args) {
    const result = callback?.apply(this, args);
    showInputsOfMode(node);
    return result;
  };
  showInputsOfMode(node);
}

const savedTokenFiles = []; // entries written since the page loaded, for Load Tokens nodes made later

function addTokenFiles(node, entries) {
  const values = node.widgets?.find((w) => w.name === "token_file")?.options?.values;
  if (!Array.isArray(values)) return;
  for (const entry of entries) if (!values.includes(entry)) values.push(entry);
}

function listTokenFile(entry) {
  if (!savedTokenFiles.includes(entry)) savedTokenFiles.push(entry);
  for (const node of app.graph?._nodes ?? []) {
    if (node.comfyClass === "URSALoadTokens") addTokenFiles(node, [entry]);
  }
}

// ComfyUI serves this folder twice (as WEB_DIRECTORY under the folder name and, from pyproject.toml's [tool.comfy]
// web, under the project name), so the frontend loads this file twice: register once.
const NAME = "URSA.Video";
if (!app.extensions.some((e) => e.name === NAME)) app.registerExtension({
  name: NAME,
  beforeRegisterNodeDef(nodeType, nodeData) {
    const specs = { ...nodeData.input?.required, ...nodeData.input?.optional };
    for (const [name, spec] of Object.entries(specs)) {
      const modes = spec?.[1]?.[MODE_OPTION];
      if (Array.isArray(modes)) (modeInputs[nodeData.name] ??= {})[name] = modes;
    }
  },
  nodeCreated(node) {
    followMode(node);
    if (node.comfyClass === "URSALoadTokens") addTokenFiles(node, savedTokenFiles);
  },
  loadedGraphNode(node) {
    showInputsOfMode(node); // the saved mode, once the workflow's values are in
  },
  setup() {
    app.api.addEventListener("executed", ({ detail }) => {
      for (const entry of detail?.output?.[TOKEN_FILE_OUTPUT] ?? []) listTokenFile(entry);
    });
  },
});
