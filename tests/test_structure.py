"""The package's structure: every module imports alone, the import graph has no cycle and points one way
(the layers below), the method core stays free of OpenCV, files and config, modules and functions stay
short, each rule the entrances share lives in one module, and a second backbone needs one module (a
fake one runs the pipeline end to end here)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videograin.method.layout import token_grid
from videograin.method.sampling import DDIMSchedule
from videograin.method.settings import Modulation
from videograin.backbones.base import Capabilities
from videograin.pipeline import BaseVideoGrainPipeline

SRC = Path(__file__).resolve().parents[1] / "src" / "videograin"
MODULES = sorted(
    ".".join(("videograin", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
)
#: The backbone-agnostic core and the attention processors: pure torch.
PURE = [m for m in MODULES if m.startswith("videograin.method.") or m == "videograin.backbones.sd_processors"]


def _imports(module: str) -> set[str]:
    """videograin modules named by ``module``'s import statements (at any depth, lazy ones included)."""
    path = SRC.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            for alias in node.names:
                found.add(f"{name}.{alias.name}" if f"{name}.{alias.name}" in MODULES else name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != module}


def test_the_import_graph_has_no_cycle():
    graph = {m: _imports(m) for m in MODULES}
    # the package's own lazy exports (videograin.edit, videograin.VideoGrainPipeline, imported on first
    # attribute access) are the top of the graph, not a dependency of what they export
    graph["videograin"] = set()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for nxt in sorted(graph[module]):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join([*path, module, nxt])
            if nxt not in state:
                visit(nxt, [*path, module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


#: The package's layers, lowest first: a module imports only from its own layer and the ones below.
#: ``videograin`` itself (``__version__``, lazy exports) may be read by any module.
LAYERS = {
    "core (the method, the value rules, no config and no pipeline)": (
        "errors", "values", "sizes", "hub", "toy", "testing", "inversion_cache", "method."),
    "backbones and media (files, pictures, optical flow)": ("backbones.", "media", "mask_files", "outputs",
                                                            "optical_flow", "viz", "control", "formats"),
    "the pipelines (the Python API)": ("pipeline", "pipeline_sd", "pipeline_wan", "pipeline_inversion", "edit_plan",
                                       "call_checks", "custom_pipeline"),
    "the config (YAML -> EditSpec)": ("config.",),
    "the jobs' parts (inputs, loading, records, masks, segments, evaluation)": (
        "inputs", "loading", "run_record", "masks", "segment", "report", "eval."),
    "the jobs (an edit, a batch)": ("runner", "batch"),
    "the entrances (command line, web app)": ("cli", "__main__", "app", "app_ui", "app_handlers", "app_pictures"),
}


def _layer(module: str) -> int:
    name = module.removeprefix("videograin.")
    for index, prefixes in enumerate(LAYERS.values()):
        if any(name == p or (p.endswith(".") and name.startswith(p)) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")


def test_each_module_imports_only_from_its_layer_and_below():
    """Imports point one way: entrances -> jobs -> their parts -> config -> pipelines -> backbones and
    media -> core. The method core imports nothing but itself, errors and values; the command line only
    parses arguments (it writes no file itself); the config's dataclasses load without torch."""
    names = list(LAYERS)
    for module in [m for m in MODULES if m != "videograin" and not m.endswith(("backbones", "config", "eval", "method"))]:
        for imported in _imports(module) - {"videograin", "videograin.backbones", "videograin.config",
                                            "videograin.eval", "videograin.method"}:
            assert _layer(imported) <= _layer(module), (
                f"{module} ({names[_layer(module)]}) imports {imported} ({names[_layer(imported)]}), a layer above")
    for module in [m for m in MODULES if m.startswith("videograin.method.")]:
        outside = {m for m in _imports(module) if not m.startswith("videograin.method.")}
        assert outside <= {"videograin.errors", "videograin.values"}, f"{module} imports {outside}"
    code = "import sys, videograin.config.spec; assert not {'torch', 'cv2'} & set(sys.modules), 'heavy imports'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "config/spec.py loads torch or OpenCV"
    writers = {"videograin.media", "videograin.outputs", "videograin.inputs", "videograin.mask_files", "videograin.viz"}
    assert not _imports("videograin.cli") & writers, "cli.py reads or writes files itself; call a library function"


def test_every_module_imports_alone_and_the_core_without_opencv_or_metrics():
    """Each module in a fresh videograin state; the method core and the processors must not pull in cv2,
    the metrics or the config layer. One interpreter loads torch, diffusers and transformers once, then
    forks a child per module: the child starts with no videograin module loaded, so a missing import or a
    cycle still fails there."""
    code = (
        "import importlib, os, sys\n"
        "import torch, diffusers, diffusers.models, diffusers.schedulers, transformers\n"
        "assert 'cv2' not in sys.modules and not any(m.startswith('videograin') for m in sys.modules)\n"
        "for name in sys.argv[1:]:\n"
        "    sys.stdout.flush()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        before = set(sys.modules)\n"
        "        importlib.import_module(name)\n"
        "        print(name, *sorted(m for m in set(sys.modules) - before"
        " if m == 'cv2' or m.startswith('videograin.')), flush=True)\n"
        "        os._exit(0)\n"
        "    assert os.waitpid(pid, 0)[1] == 0, f'importing {name} alone failed'\n"
    )
    modules = [m for m in MODULES if m != "videograin.__main__"]  # that one runs the command
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {line.split()[0]: set(line.split()[1:]) for line in out.stdout.splitlines()}
    assert sorted(loaded) == sorted(modules)
    for module in PURE:
        assert "cv2" not in loaded[module], f"{module} imports OpenCV"
        bad = {m for m in loaded[module] if m.startswith(("videograin.eval", "videograin.config", "videograin.media",
                                                           "videograin.inputs", "videograin.outputs"))}
        assert not bad, f"{module} imports {bad}"


# ----------------------------------------------------------------------------------------------- a fake backbone


class FakeBackbone:
    """A backbone of a few lines: latents are 2x2-pooled frames, the 'denoiser' predicts a fixed share
    of its input, the text encoder embeds each token id as a constant vector."""

    native_size = 16
    capabilities = Capabilities(family="sd", level="level", num_levels=1, temporal_modes=("full",),
                                temporal_aids=False, control=False, frame_chunk=1, temporal_factor=1, size_multiple=2, vae_factor=2,
                                rad_levels=(0,))

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def check_size(self, num_frames, height, width):
        if height % 2 or width % 2:
            raise ValueError("frame sides must be even")

    def encode(self, frames):
        return torch.nn.functional.avg_pool2d(frames.float(), 2)

    def decode(self, latents):
        return torch.nn.functional.interpolate(latents, scale_factor=2).clamp(-1, 1)

    def encode_prompt(self, text):
        ids = self.tokenizer(text, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
        return ids[:, :, None].float().expand(-1, -1, 4)

    def regional_prompt_embeds(self, prompt, region_prompts, spans):
        return self.encode_prompt(prompt)

    def word_positions(self, prompt):
        return slice(1, -1)

    def latent_frames(self, masks):
        return masks

    def token_grids(self, latent_size):
        return [token_grid(latent_size, 0)]

    def layout(self, masks, spans, latent_size, temporal):
        from videograin.method.layout import build_layout

        return build_layout(masks, spans, latent_size, 1, temporal, 8)

    def schedule(self, steps):
        alphas = torch.linspace(0.99, 0.1, 1000)
        timesteps = torch.arange(999, -1, -1000 // steps)[:steps]
        return DDIMSchedule(timesteps, [float(alphas[t]) for t in timesteps] + [0.999], 1000)

    def temporal_aids(self, frames, latent_size, settings):
        return None

    def control(self, images, scale):
        return None

    def denoise_fn(self, cond, uncond, guidance_scale, num_frames, schedule, *, layout=None, **options):
        def denoise(latents, t, step):
            self.calls.append((t, step, layout is not None))
            return 0.1 * latents

        return denoise

    def attention_processors(self):
        import contextlib

        return contextlib.nullcontext()


class FakePipeline(BaseVideoGrainPipeline):
    def __init__(self, backbone):
        super().__init__()  # a DiffusionPipeline with no components
        self.register_to_config()
        self._fake = backbone

    @property
    def backbone(self):
        return self._fake

    @property
    def _execution_device(self):  # diffusers finds it from the registered modules; there are none
        return torch.device("cpu")

    @property
    def components(self):  # no registered modules (diffusers would expect `backbone` to be one)
        return {}


@pytest.mark.parametrize("blend", [True, False])
def test_a_fake_backbone_runs_the_pipeline_end_to_end(tiny_pipe, blend):
    """Inversion then editing through the backbone seam alone: 3 inversion and 3 editing steps reach
    the fake denoiser with the schedule's steps in order; with blend on, latents outside the edited
    region follow the inversion trajectory back to the source's own latents."""
    backbone = FakeBackbone(tiny_pipe.tokenizer)
    pipe = FakePipeline(backbone)
    pipe.set_progress_bar_config(disable=True)
    frames = torch.rand(3, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = torch.zeros(2, 3, 8, 12, dtype=torch.bool)
    masks[0, :, :, :6] = True
    masks[1, :, :, 6:] = True
    out = pipe((frames + 1) / 2, masks, "a red apple on the grass", ["red apple", ""], num_inference_steps=3,
               guidance_scale=1.0, modulation=Modulation(steps=3), blend=blend, composite=False, output_type="pt")
    assert out.frames.shape == (1, *frames.shape) and out.latents.shape == (3, 3, 4, 6)
    schedule = backbone.schedule(3)
    steps = [step for _, step, _ in backbone.calls]
    assert steps == [2, 1, 0, 0, 1, 2]  # inversion walks the schedule backwards, then the edit forwards
    assert [t for t, _, _ in backbone.calls][3:] == schedule.timesteps.tolist()
    source = backbone.encode(frames)
    right = (slice(None), slice(None), slice(None), slice(3, None))  # the kept region's latents
    if blend:
        torch.testing.assert_close(out.latents[right], source[right], rtol=0, atol=1e-5)
    else:
        assert (out.latents[right] - source[right]).abs().max() > 1e-3  # without blend nothing holds it


# --------------------------------------------------------------------------- rules shared by the backbones

#: Each rule the backbones share: the one module that holds it, and a pattern that writing it again shows.
SHARED_RULES = {
    "the modulation strength λ = c·ξ(t)·(1 − S)": ("method/modulation.py", r"\(1 - .*share"),
    "the capability table (what a backbone supports)": ("backbones/base.py",
                                                        r"not available on this model|SD-only|- 1\) %|more than the model.s"),
    "re-noising a clean sample to a level (IRJS, blend)": ("method/sampling.py",
                                                             r"def (noised|signal_noise)\b|\*\* ?0\.5 ?\*"),
}


@pytest.mark.parametrize("rule", SHARED_RULES)
def test_each_rule_shared_by_the_backbones_lives_in_one_module(rule):
    """The backbones, their processors and the pipeline use the rule from its module, never a copy."""
    import re

    home, pattern = SHARED_RULES[rule]
    assert re.search(pattern, (SRC / home).read_text()), f"{rule}: not found in {home}"
    users = [*sorted((SRC / "backbones").glob("*.py")), *sorted(SRC.glob("pipeline*.py")), SRC / "edit_plan.py",
             SRC / "call_checks.py", *sorted((SRC / "method").glob("*.py"))]
    copies = [str(p.relative_to(SRC)) for p in users if p != SRC / home and re.search(pattern, p.read_text())]
    assert not copies, f"{rule} is written again in {copies}; use {home}"


# ------------------------------------------------------------------------------ rules every entrance shares

#: Each rule more than one entrance (config, Python API, CLI, batch, app, masks, eval) needs: the one module
#: that holds it, and a pattern that writing it again elsewhere shows.
PACKAGE_RULES = {
    "the frame-size rule (sides multiples of the model's size multiple, at most MAX_SIDE; the default size)": (
        "sizes.py", r" %\s*(multiple|[\w.]*size_multiple)\b|multiple of \{|/\s*multiple\s*\+\s*0\.5|round\([^)]*/\s*multiple\)|long_side\s*/\s*max\(|MAX_SIDE\s*="),
    "a region is edited when its prompt is not empty": (
        "values.py", r"(\bif|\bnot|bool\()\s*(?!global)[\w.]*(prompt|\bp|\blocal)(\[\"prompt\"\])?\.strip\(\)|prompt\.strip\(\) != \"\""),
    "a region given by a box or clicks (one type)": ("config/spec.py", r"^\s+box: tuple\[int, int, int, int\]"),
    "the video and image file suffixes": ("media.py", r"\"\.mp4\", \"\.webm\"|\"\.png\", \"\.jpg\""),
    "config values set on top of a config (CLI flags, edit() keywords, batch jobs)": (
        "config/overrides.py", r"OVERRIDES\s*=|\*\w+, last = \w+\.split\(\"\.\"\)"),
    "a config section's keys are its dataclass's fields": ("config/yaml_fields.py", r"def keys_of\b|check_keys\(\w+, _(?!REGION)\w*KEYS"),
    "frames in [-1, 1] to uint8 and back": ("media.py", r"def to_uint8\b|div\(127\.5\)\.sub\(1"),
    "an output folder's checks and lock (every job that writes one)": ("outputs.py", r"def (check_output_folder|output_lock)\b|\bcheck_output_folder\(|\boutput_lock\("),
}


@pytest.mark.parametrize("rule", PACKAGE_RULES)
def test_each_rule_the_entrances_share_lives_in_one_module(rule):
    import re

    home, pattern = PACKAGE_RULES[rule]
    assert re.search(pattern, (SRC / home).read_text(), re.M), f"{rule}: not found in {home}"
    copies = [str(p.relative_to(SRC)) for p in sorted(SRC.rglob("*.py"))
              if p != SRC / home and re.search(pattern, p.read_text(), re.M)]
    assert not copies, f"{rule} is written again in {copies}; use {home}"


# ----------------------------------------------------------------------------------------- size of the parts

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80
#: Functions allowed past MAX_FUNCTION_LINES, each with its reason.
LONG_FUNCTIONS = {
    "method/triton_layout.py:_layout_attention_kernel": "a Triton kernel is one function: its loads, the online "
                                                        "softmax and the stores share registers",
    "cli.py:_parser": "the argparse table: every command's flags in one place, as --help lists them",
    "pipeline.py:__call__": "the diffusers call contract: every argument of the call, checked and then passed "
                            "stage by stage, reads as one function as in diffusers' own pipelines",
}


def test_no_module_or_function_is_too_long_to_read():
    """No module of the package over 450 lines, no function over 80 (the listed exceptions aside): a
    concern that grows past that is two concerns."""
    long_modules, long_functions = [], {}
    for path in sorted(SRC.rglob("*.py")):
        text, name = path.read_text(), str(path.relative_to(SRC))
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{name}:{node.name}"] = length
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert set(long_functions) == set(LONG_FUNCTIONS), (
        f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}; LONG_FUNCTIONS lists {sorted(LONG_FUNCTIONS)}")
