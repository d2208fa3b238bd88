"""The package's structure: every module imports alone, the method core stays free of OpenCV and the
metrics, the import graph has no cycle, and a second backbone needs one module (a fake one runs the
pipeline end to end here)."""

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
    # the metrics use optical flow, so optical flow must not import the metrics
    assert "videograin.eval.metrics" not in graph["videograin.eval.optical_flow"]


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
        bad = {m for m in loaded[module] if m.startswith(("videograin.eval", "videograin.config", "videograin.io"))}
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
    users = [*sorted((SRC / "backbones").glob("*.py")), SRC / "pipeline.py", *sorted((SRC / "method").glob("*.py"))]
    copies = [str(p.relative_to(SRC)) for p in users if p != SRC / home and re.search(pattern, p.read_text())]
    assert not copies, f"{rule} is written again in {copies}; use {home}"
