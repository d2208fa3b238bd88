"""The package as a user installs it: a wheel, in a fresh environment, from a folder far from the checkout.

`videograin demo` must do the real offline edit with what the wheel ships (the toy model, the demo clip
and its masks), found without a checkout. Builds the wheel (about 25 MB) and a venv: about a minute.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from toyworld import judge
from videograin import mask_files, media

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the wheel of this checkout; its dependencies (torch, diffusers, ...) come
    from the test's environment through a .pth line, so nothing is downloaded. Returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(root / "dist"), str(ROOT)], capture_output=True, text=True)
    if built.returncode:
        pytest.fail(f"pip wheel failed: {built.stderr[-2000:]}")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    venv_python = root / "venv" / "bin" / "python"
    venv_site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # the test environment's packages after the venv's own: the wheel's videograin comes first
    Path(venv_site, "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((root / "dist").glob("videograin-*.whl"))
    subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return root / "venv" / "bin"


def test_the_wheel_ships_the_toy_models_and_the_demo_runs_from_anywhere(installed, tmp_path):
    work = tmp_path / "elsewhere"  # no checkout here or above
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "2"
    where = subprocess.run([str(installed / "python"), "-c", "import videograin.toy as t; print(t.SD_MODEL)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed.parent)) and ROOT.as_posix() not in where, where  # the wheel's copy
    for model in ("sd", "parts", "wan"):
        assert (Path(where).parent / model / "model_index.json").is_file(), model
    subprocess.run([str(installed / "videograin"), "demo", "--out", "demo", "--quiet"], cwd=work, env=env, check=True)

    demo = Path(where).parent / "demo"
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in media.list_images(work / "demo" / "frames")])
    assert len(frames) == 12
    config = yaml.safe_load((demo / "config.yaml").read_text())
    for region in config["regions"][:2]:  # left, right: "<colour> <class>"
        mask = mask_files.read_mask_folder(demo / region["masks"], 0, 12, 1, 12, "masks")
        found = [getattr(judge.in_region(judge.detect(f)[1], mask[i]), "identity", None) for i, f in enumerate(frames)]
        assert found.count(tuple(region["prompt"].split())) >= 10, (region, found)
    background = config["source_prompt"].split(" on a ")[1].split()[0]
    assert all(judge.detect(f)[0] == background for f in frames)
    fps = json.loads((work / "demo" / "run.json").read_text())["fps"]
    shown = []  # the GIF as played: each stored frame for its delay (Pillow stores a repeated frame as a longer one)
    with Image.open(work / "demo" / "comparison.gif") as gif:
        assert min(gif.size) >= 256, gif.size  # crisp: 32 px enlarged 8x
        for index in range(gif.n_frames):
            gif.seek(index)
            shown += [np.asarray(gif.convert("RGB"))] * round(gif.info["duration"] * fps / 1000)
    assert len(shown) == 12  # one GIF frame per edited frame
    edit_half = np.stack([f[::8, (32 + 2) * 8 :: 8] for f in shown])  # source | edit, 8x nearest: the edit
    assert np.abs(edit_half.astype(int) - frames).mean() < 6  # the edited frames, in order (GIF palette aside)
