"""Digest of the frames the bundled examples produce, to show a change leaves outputs bit for bit equal.

    python scripts/frames_digest.py OUT_DIR > digest.txt     # at one commit, then at another; diff them

Runs, on the CPU, the README's example edit (examples/two_balls on the tiny random-weight model; also
with ReAtCo, temporal windows, flow-guided attention + PnP, and record_attention: compare), the toy-world
demo (`videograin demo`, the toy model the package ships) and the toy-world quick benchmark, and prints
one sha256 line per written frame PNG, attention grid and contact sheet.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain": {},
    "reatco": {"method": "videograin+reatco", "reatco": {"steps": 2}},
    "window": {"window": {"size": 8, "stride": 4}},
    "aids": {"temporal_aids": {"flow": {"levels": [0, 1]}, "pnp": {"steps": 2}}, "record_attention": "compare"},
}


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "videograin.cli", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-model"
    if not model.exists():
        run("make-tiny-model", str(model))
    example = yaml.safe_load((ROOT / "examples/two_balls/config.yaml").read_text())
    for name, edit in VARIANTS.items():
        config = dict(example, edit={**example["edit"], "steps": 4, **edit})
        config["video"] = {**config["video"], "path": str(ROOT / "examples/two_balls" / config["video"]["path"])}
        config["regions"] = [dict(r, masks=str(ROOT / "examples/two_balls" / r["masks"])) for r in config["regions"]]
        path = out / f"two_balls_{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        run("edit", str(path), "--model", str(model), "--out", str(out / f"two_balls_{name}"), "--overwrite")
    run("demo", "--out", str(out / "toyworld_demo"), "--overwrite")
    subprocess.run([sys.executable, "-m", "toyworld.bench", "--quick", "--out", str(out / "bench_quick")],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for path in sorted(out.rglob("*.png")):
        if "frames" in path.parts or path.name in ("grid.png", "contact_sheet.png"):
            print(hashlib.sha256(path.read_bytes()).hexdigest(), path.relative_to(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
