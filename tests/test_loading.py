"""Loading what people have: single-file SD checkpoints (written here from the tiny model in the original
layout) and LoRAs (written here with PEFT) applied before the processors are installed, through the
config and through ``from_single_file`` / ``pipe.load_lora_weights``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml



@pytest.fixture(scope="module")
def single_file(tiny_model_dir, tmp_path_factory):
    from videograin.testing import save_single_file

    return save_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def _edit_latents(pipe) -> torch.Tensor:
    video = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 4, 32, 32, dtype=torch.bool)
    masks[..., :16] = True
    pipe.set_progress_bar_config(disable=True)
    return pipe(video, masks, "a red apple on the grass", ["red apple"], height=32, width=32, num_inference_steps=3,
                output_type="latent").latents


def test_a_single_file_checkpoint_edits_as_its_folder_does(tiny_model_dir, single_file):
    from safetensors import safe_open

    from videograin import VideoGrainPipeline

    with safe_open(str(single_file), framework="pt") as weights:
        assert any(k.startswith("model.diffusion_model.input_blocks.") for k in weights.keys())  # the original layout
    folder = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    single = VideoGrainPipeline.from_single_file(str(single_file), config=str(tiny_model_dir))
    torch.testing.assert_close(_edit_latents(single), _edit_latents(folder), rtol=0, atol=1e-5)


def test_a_single_file_in_a_config_needs_its_config_files_and_says_which(example_config, single_file, tiny_model_dir,
                                                                         tmp_path):
    from videograin.cli import main

    config = yaml.safe_load(example_config.read_text())
    config.update(edit={**config["edit"], "steps": 2}, video={**config["video"], "frames": 4})
    runs = {}
    for name, model in (("folder", {"model": str(tiny_model_dir)}),
                        ("single", {"model": str(single_file), "model_config": str(tiny_model_dir)})):
        path = example_config.with_name(f"{name}.yaml")
        path.write_text(yaml.safe_dump({**config, **model}))
        assert main(["edit", str(path), "--out", str(tmp_path / name), "--quiet"]) == 0
        runs[name] = [p.read_bytes() for p in sorted((tmp_path / name / "frames").iterdir())]
    assert runs["single"] == runs["folder"]

    path = example_config.with_name("no_config.yaml")
    path.write_text(yaml.safe_dump({**config, "model": str(single_file)}))  # SD 1.5's configs: not cached offline
    assert main(["edit", str(path), "--out", str(tmp_path / "no_config"), "--quiet"]) == 2
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"")
    path.write_text(yaml.safe_dump({**config, "model": str(pickled), "model_config": str(tiny_model_dir)}))
    assert main(["edit", str(path), "--out", str(tmp_path / "pickled"), "--quiet"]) == 2
    assert not (tmp_path / "no_config").exists() and not (tmp_path / "pickled").exists()


# ------------------------------------------------------------------------------------------------ LoRA


def _write_sd_lora(model_dir, folder):
    """A rank-4 LoRA on the tiny UNet's attention projections with random (non-zero) up weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def sd_lora(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("peft", reason="LoRAs load through PEFT: pip install 'videograin[lora]'")
    return _write_sd_lora(tiny_model_dir, tmp_path_factory.mktemp("lora"))


def _unet_output(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, pipe.unet.config.cross_attention_dim,
                                                                     generator=g)
    with torch.no_grad():
        return pipe.unet(latents, 500, encoder_hidden_states=text).sample


def test_a_lora_changes_the_unet_and_scale_0_is_the_model_without_it(tiny_model_dir, sd_lora):
    from videograin import VideoGrainPipeline

    pipe = VideoGrainPipeline.from_pretrained(tiny_model_dir)
    base = _unet_output(pipe)
    pipe.load_lora_weights(str(sd_lora), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    assert (_unet_output(pipe) - base).abs().max() > 1e-3
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    torch.testing.assert_close(_unet_output(pipe), base, rtol=0, atol=1e-6)


def test_lora_in_a_config_reaches_the_edit_and_a_bad_file_is_one_line(example_config, sd_lora, tmp_path):
    from videograin.cli import main

    config = yaml.safe_load(example_config.read_text())
    config["edit"] = {**config["edit"], "steps": 2}
    config["video"] = {**config["video"], "frames": 4}
    frames = {}
    for name, lora in (("plain", None), ("lora", [{"path": str(sd_lora), "scale": 1.0}]),
                       ("zero", [{"path": str(sd_lora), "scale": 0.0}])):
        path = example_config.with_name(f"{name}.yaml")
        path.write_text(yaml.safe_dump({**config, **({"lora": lora} if lora else {})}))
        assert main(["edit", str(path), "--out", str(tmp_path / name), "--quiet"]) == 0
        frames[name] = [p.read_bytes() for p in sorted((tmp_path / name / "frames").iterdir())]
    assert frames["lora"] != frames["plain"] and frames["zero"] == frames["plain"]
    record = json.loads((tmp_path / "lora" / "run.json").read_text())
    assert record["config"]["lora"] == [{"path": str(sd_lora), "scale": 1.0}]

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    path = example_config.with_name("broken.yaml")
    path.write_text(yaml.safe_dump({**config, "lora": [{"path": str(broken)}]}))
    assert main(["edit", str(path), "--out", str(tmp_path / "broken"), "--quiet"]) == 2
    assert not (tmp_path / "broken").exists()
