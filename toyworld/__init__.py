"""The toy world: a synthetic shape-video world, its judge, the toy models' training and the editing benchmark."""

from pathlib import Path

from videograin.toy import PARTS_MODEL, SD_MODEL, WAN_MODEL


def model_label(model: str | Path) -> str:
    """A model folder as results name it: a shipped toy model by its constant (``videograin.toy.SD_MODEL``),
    any other folder as given (results written on one machine name no path of it)."""
    toys = {Path(path).resolve(): name for name, path in
            (("SD_MODEL", SD_MODEL), ("PARTS_MODEL", PARTS_MODEL), ("WAN_MODEL", WAN_MODEL))}
    name = toys.get(Path(model).resolve())
    return f"videograin.toy.{name}" if name else str(model)
