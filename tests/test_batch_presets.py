"""The evaluation presets against the reference protocol: baaivision/URSA evaluations/{geneval,dpgbench,vbench}/
sample.py at 626dfd3. Each test reads a small set in the benchmark's own format and checks the prompts, settings and
names against what the reference script does with it (the `reference_*` helpers restate what its code writes)."""
import argparse
import json
from pathlib import Path

import pytest

from ursa_core.batch.presets import DPGBENCH, GENEVAL, VBENCH
from ursa_core.batch.prompt_sets import read_prompt_set
from ursa_core.cli.batch_command import apply_protocol, describe_protocol
from ursa_core.cli.command_line import build_parser
from ursa_core.errors import InputError

# GenEval's own prompts/evaluation_metadata.jsonl (djghosh13/geneval): one object a line, no dense prompts.
GENEVAL_METADATA = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "toilet", "count": 1}, {"class": "cow", "count": 1}],
     "exclude": [{"class": "cow", "count": 2}], "prompt": "a photo of a toilet and a cow"},
    {"tag": "colors", "include": [{"class": "cake", "count": 1, "color": "yellow"}],
     "prompt": "a photo of a yellow cake"},
]
VBENCH_NEGATIVE = "worst quality, low quality, inconsistent motion, static, still, blurry, jittery, distorted, ugly"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def reference_geneval(prompt_list: list, metadata: list, prompt_type: str, sample_size: int = 4) -> dict:
    """What evaluations/geneval/sample.py writes: per item, `<id:05d>/samples/<k:05d>.png` for its sample_size
    images (k counted per folder) of prompt `item[prompt_type]`, and `<id:05d>/metadata.jsonl` = json.dump of
    metadata[id]."""
    files = {}
    for item in prompt_list:
        root = f"{item['id']:05d}"
        for k in range(sample_size):
            files[f"{root}/samples/{k:05d}.png"] = item[prompt_type]
        files[f"{root}/metadata.jsonl"] = json.dumps(metadata[item["id"]])
    return files


def ours(prompt_set) -> dict:
    files = {job.out: job.samples[0].prompt for job in prompt_set.jobs}
    files.update({path: text for job in prompt_set.jobs for path, text in job.side_files})
    return files


def protocol_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["batch", "--model", "m", "--prompts", "p", "--outdir", "o", *argv])


def test_geneval_official_metadata_is_read_as_it_is(tmp_path):
    path = write(tmp_path / "evaluation_metadata.jsonl", "\n".join(map(json.dumps, GENEVAL_METADATA)) + "\n")
    prompt_set = read_prompt_set(path, samples=4)
    assert prompt_set.format == "geneval"                    # told apart from a plain JSONL by its keys
    listed = [{"id": i, **m} for i, m in enumerate(GENEVAL_METADATA)]
    assert ours(prompt_set) == reference_geneval(listed, GENEVAL_METADATA, "prompt")
    assert any("no 'dense_prompt'" in note for note in prompt_set.notes)
    assert {job.samples[0].identity for job in prompt_set.jobs} == {"0", "1", "2"}
    with pytest.raises(InputError, match="has no 'dense_prompt' prompts; use --prompt-field prompt"):
        read_prompt_set(path, samples=4, prompt_field="dense_prompt")


def test_geneval_reference_prompts_sample_the_dense_prompt_by_default(tmp_path):
    write(tmp_path / "metadata.jsonl", "\n".join(map(json.dumps, GENEVAL_METADATA)))
    prompts = [{"id": 2, "prompt": "a photo of a yellow cake", "dense_prompt": "A yellow cake on a plate."},
               {"id": 0, "prompt": "a photo of a bench", "dense_prompt": "A wooden bench in a park."}]
    path = write(tmp_path / "prompts.json", json.dumps(prompts))
    assert ours(read_prompt_set(path, samples=4)) == reference_geneval(prompts, GENEVAL_METADATA, "dense_prompt")
    assert ours(read_prompt_set(path, samples=4, prompt_field="prompt")) == \
        reference_geneval(prompts, GENEVAL_METADATA, "prompt")
    write(tmp_path / "prompts.json", json.dumps(prompts + [{"id": 1, "prompt": "a photo of a toilet and a cow"}]))
    with pytest.raises(InputError, match="item 1 has no 'dense_prompt'"):
        read_prompt_set(path, samples=4)


def test_geneval_protocol_is_the_reference_scripts(tmp_path):
    args, protocol, overridden = apply_protocol(protocol_args(), "geneval")
    # geneval/sample.py: --height 1024 --width 1024 --guidance_scale 7 --num_inference_steps 25 --sample_size 4,
    # torch.float16, no negative prompt; images, so no motion prefix
    assert (args.height, args.width, args.guidance, args.steps, args.samples, args.dtype, args.negative, args.frames,
            args.motion) == (1024, 1024, 7.0, 25, 4, "fp16", "", 1, None)
    assert protocol is GENEVAL and overridden == {}
    assert "evaluations/geneval/sample.py" in describe_protocol(protocol, overridden)


def test_an_option_given_beats_the_preset_and_is_said(tmp_path):
    args, protocol, overridden = apply_protocol(protocol_args("--steps", "2", "--height", "512"), "geneval")
    assert (args.steps, args.height, args.width) == (2, 512, 1024)
    assert overridden == {"steps": (2, 25), "height": (512, 1024)}
    assert "differs from it: height=512 (reference 1024), steps=2 (reference 25)" in \
        describe_protocol(protocol, overridden)
    plain, none, _ = apply_protocol(protocol_args(), "txt")
    assert none is None
    assert (plain.samples, plain.guidance, plain.frames, plain.negative, plain.dtype, plain.height) == \
        (1, 7.0, 1, "", "auto", None)


def reference_dpgbench(prompt_list: list, sample_size: int = 4) -> dict:
    """What evaluations/dpgbench/sample.py writes: `<id>.png`, the 2x2 grid of the prompt's 4 samples in the order
    drawn (row 0: samples 0, 1; row 1: samples 2, 3), of prompt `item["prompt"]`."""
    return {f"{item['id']}.png": [item["prompt"]] * sample_size for item in prompt_list}


def test_dpgbench_grid_names_and_protocol(tmp_path):
    prompts = [{"id": "111", "prompt": "five pairs of shoes"}, {"id": "118", "prompt": "a tranquil lake"}]
    path = write(tmp_path / "prompts.json", json.dumps(prompts))
    prompt_set = read_prompt_set(path, samples=4)
    assert prompt_set.format == "dpgbench"
    assert {job.out: [s.prompt for s in job.samples] for job in prompt_set.jobs} == reference_dpgbench(prompts)
    assert all(job.layout == "grid2x2" and [s.n for s in job.samples] == [0, 1, 2, 3] for job in prompt_set.jobs)
    args, protocol, _ = apply_protocol(protocol_args(), "dpgbench")
    assert (args.height, args.width, args.guidance, args.steps, args.samples, args.dtype) == (1024, 1024, 7.0, 25, 4,
                                                                                          "fp16")
    assert protocol is DPGBENCH and protocol.square
    with pytest.raises(InputError, match="exactly 4 samples"):
        read_prompt_set(path, samples=2)
    write(tmp_path / "prompts.json", json.dumps([{"id": "v1.2", "prompt": "x"}]))
    with pytest.raises(InputError, match="scorer reads the id as the file name up to its first '.'"):
        read_prompt_set(path, samples=4)


def reference_vbench(folder: Path, outdir: str, sample_size: int = 5, motion: float = 9.0) -> dict:
    """What evaluations/vbench/sample.py writes: the sorted `<track>.txt` files name the videos
    `<outdir>/<track>/<line>-<k>.mp4` (k < sample_size), and the paired `<track>_longer.txt` lines are sampled,
    as `motion=9.0, <longer line>` with its fixed negative prompt."""
    files = {}
    for short in sorted(p for p in folder.glob("*.txt") if "longer" not in p.name):
        longer = short.with_name(short.stem + "_longer.txt")
        for raw, dense in zip(short.read_text().splitlines(), longer.read_text().splitlines()):
            for k in range(sample_size):
                files[f"{outdir}/{short.stem}/{raw.strip()}-{k}.mp4"] = f"motion={motion:.1f}, {dense.strip()}"
    return files


def test_vbench_names_prompts_and_protocol(tmp_path):
    folder = tmp_path / "prompts"
    write(folder / "color.txt", "a red bicycle\na green bicycle")
    write(folder / "color_longer.txt", "A vibrant red bicycle on a street.\nA vintage green bicycle at dusk.")
    write(folder / "scene.txt", "alley")
    write(folder / "scene_longer.txt", "A narrow alley at night, wet cobblestones.")
    args, protocol, _ = apply_protocol(protocol_args(), "vbench")
    prompt_set = read_prompt_set(folder, samples=args.samples)
    assert prompt_set.format == "vbench"
    got = {f"out/{job.out}": f"motion={args.motion:.1f}, {job.samples[0].prompt}" for job in prompt_set.jobs}
    assert got == reference_vbench(folder, "out")
    # vbench/sample.py: --num_frames 49 --height 320 --width 512 --motion_score 9 --guidance_scale 7
    # --num_inference_steps 50 --sample_size 5, torch.float16, its negative prompt, fps=12
    assert (args.frames, args.height, args.width, args.motion, args.guidance, args.steps, args.samples, args.dtype,
            args.negative) == (49, 320, 512, 9.0, 7.0, 50, 5, "fp16", VBENCH_NEGATIVE)
    assert protocol is VBENCH and protocol.fps == 12.0
    short = read_prompt_set(folder, samples=5, prompt_field="short")
    assert {job.samples[0].prompt for job in short.jobs} == {"a red bicycle", "a green bicycle", "alley"}


def test_vbench_track_without_its_longer_prompts(tmp_path):
    folder = tmp_path / "prompts"
    write(folder / "color.txt", "a red bicycle")
    write(folder / "color_longer.txt", "A vibrant red bicycle.")
    write(folder / "scene.txt", "alley")
    with pytest.raises(InputError, match="scene.txt has no scene_longer.txt beside it"):
        read_prompt_set(folder, samples=5)
    (folder / "color_longer.txt").unlink()
    prompt_set = read_prompt_set(folder, samples=5)        # VBench's own prompt files: no longer prompts at all
    assert any("sampling 'short'" in note for note in prompt_set.notes)
    assert prompt_set.jobs[0].samples[0].prompt == "a red bicycle"


def test_vbench_prompts_too_long_for_a_file_name(tmp_path):
    folder = tmp_path / "prompts"
    long_prompt = "\u4e00\u53ea\u732b" * 30                 # 90 CJK characters: 270 bytes of UTF-8
    write(folder / "custom.txt", f"{long_prompt}\na/b")
    write(folder / "custom_longer.txt", "x\ny")
    with pytest.raises(InputError, match="line 2: prompt 'a/b' cannot name a file: it contains '/'"):
        read_prompt_set(folder, samples=5)
    write(folder / "custom.txt", long_prompt)
    write(folder / "custom_longer.txt", "x")
    prompt_set = read_prompt_set(folder, samples=5)
    names = [job.out for job in prompt_set.jobs]
    assert len({name.rsplit("-", 1)[0] for name in names}) == 1 and "~" in names[0]
    assert [job.full_name for job in prompt_set.jobs] == [f"custom/{long_prompt}-{n}.mp4" for n in range(5)]
    assert all(len(Path(name).name.encode()) < 255 - 20 for name in names)
