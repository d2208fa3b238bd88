"""The output folder's safety: never an input or someone else's folder, one run at a time (a lock),
room on disk checked first, and written through a temporary folder renamed into place on success."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from .errors import SpecError

logger = logging.getLogger(__name__)


def check_output_file(path: Path, inputs: Sequence[Path], field: str) -> Path:
    """SpecError(field) when the file output ``path`` may not be written: it is a folder, or it is one of
    the ``inputs`` (it would replace what is read). Returns it resolved."""
    path = Path(path).resolve()
    if path.is_dir():
        raise SpecError(field, f"{path} is a folder", "give a file name, e.g. metrics.json")
    if path in {Path(source).resolve() for source in inputs}:
        raise SpecError(field, f"{path} is one of the inputs", "write the result to another file")
    return path


#: What a videograin run writes into its record's "command" (run.json; masks.json for `masks`): the
#: mark of a folder --overwrite may replace.
OUTPUT_COMMANDS = ("edit", "reconstruct", "segment", "masks")


def _is_our_output(folder: Path) -> bool:
    """Whether ``folder`` holds a run.json (or masks.json) written by a videograin command."""
    for name in ("run.json", "masks.json"):
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("command") in OUTPUT_COMMANDS:
            return True
    return False


def check_output_folder(final: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """SpecError("output") when ``final`` may not be written: it is a file, it is, holds or sits inside
    one of the ``inputs`` (config, video, mask folders, model ...), or it is a non-empty folder and
    ``overwrite`` is false or it is not a previous output of this tool (no run.json of ours)."""
    final = Path(final).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if final == source or source.is_relative_to(final) or final.is_relative_to(source):
            raise SpecError("output", f"{final} is, holds or sits inside the input {source}",
                            "choose an output folder apart from the config, video, masks and model")
    if final.exists() and not final.is_dir():
        raise SpecError("output", f"{final} is a file", "choose a folder (--overwrite replaces only output folders)")
    if final.is_dir() and any(final.iterdir()):
        if not overwrite:
            raise SpecError("output", f"{final} is not empty", "pass --overwrite or choose another folder")
        if not _is_our_output(final):
            raise SpecError("output", f"{final} is not a videograin output folder (no run.json of ours), so "
                            "--overwrite will not delete it", "choose an empty or new folder")


@contextlib.contextmanager
def locked_output(final: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> Iterator[None]:
    """The start of every job that writes an output folder (edit, reconstruct, segment, masks):
    ``check_output_folder``, then ``output_lock`` held for the block."""
    check_output_folder(final, overwrite, inputs)
    with output_lock(final):
        yield


@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """Hold ``.<final.name>.lock`` beside ``final`` (created with O_EXCL, holding this process's id) for
    one run: a second run into the same output is refused at once with SpecError("output"). A lock
    whose process is gone is taken over; the run's stale temporary folders are removed then, except an
    old output moved aside by a run killed between the two renames of ``output_folder``'s swap, which
    is put back under ``final``. Parent folders made for the lock are removed again if the run leaves
    them empty."""
    final = Path(final).resolve()
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # deepest first
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError("output", f"cannot make the folder {final.parent} ({err.strerror or err})",
                        "choose an output inside a folder you can write to") from None
    lock = final.parent / f".{final.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                raise SpecError("output", f"another videograin run (process {owner}) is writing {final}",
                                "wait for it to finish, or choose another folder") from None
            logger.info("removing the stale lock %s", lock)
            lock.unlink(missing_ok=True)
        except OSError as err:  # read-only, /proc, no permission
            raise SpecError("output", f"cannot write in {final.parent} ({err.strerror or err})",
                            "choose an output folder you can write to") from None
    else:
        raise SpecError("output", f"cannot take the lock {lock}", "remove it if no videograin run is writing there")
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    try:
        for stale in sorted(final.parent.glob(f".{final.name}.*"), key=lambda p: not p.name.endswith(".old")):
            if not (stale.is_dir() and re.fullmatch(rf"\.{re.escape(final.name)}\.[0-9a-f]{{8}}(\.old)?", stale.name)):
                continue
            if stale.name.endswith(".old") and not final.exists():  # killed mid-swap: the old output is this
                logger.info("restoring %s from %s, left by a run killed while replacing it", final, stale)
                os.replace(stale, final)
                continue
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.unlink(missing_ok=True)
        for folder in created:  # what the lock needed: removed again unless the run wrote into it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def free_space(folder: Path) -> tuple[int, int | None]:
    """Bytes and files (inodes) free to this user on the file system of ``folder`` (or of its nearest
    existing parent); files None where the file system sets no limit on them."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize, (stats.f_favail if stats.f_files else None)


def check_free_space(final: Path, frames: int, size: tuple[int, int]) -> None:
    """SpecError("output") when the file system of ``final`` lacks room for an edit's outputs, estimated
    as 8 bytes per output pixel (frames/ PNGs, the GIF and the mp4s, with margin) plus 16 MiB, and as
    one file per frame plus 32 (the other outputs and their folders, with margin)."""
    need, files = 8 * frames * size[0] * size[1] + 16 * 2**20, frames + 32
    free, free_files = free_space(Path(final).parent)
    if free < need:
        raise SpecError("output", f"only {free / 2**20:.0f} MiB free where {final} goes, the outputs need about "
                        f"{need / 2**20:.0f} MiB", "free some space or choose another folder")
    if free_files is not None and free_files < files:
        raise SpecError("output", f"only {free_files} more files (inodes) can be made where {final} goes, the "
                        f"outputs need about {files}", "delete some files there or choose another folder")


def _lock_owner(lock: Path) -> int | None:
    """The id of the live process holding ``lock``, or None when it is gone (a stale lock). A lock that
    is not a regular file, or holds anything but a process id (junk, 0, negative, out of range), is stale."""
    try:
        if not lock.is_file():
            return None
        pid = int(lock.read_text(encoding="utf-8", errors="replace").strip())
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError, OverflowError):
        return None
    return pid


@contextlib.contextmanager
def output_folder(final: Path, overwrite: bool) -> Iterator[Path]:
    """Write outputs into a temporary sibling folder and move it to ``final`` only on success.

    Raises SpecError("output") as ``check_output_folder`` does. Yields the temporary folder (same parent,
    name ``.<final.name>.<random>``). On normal exit the old ``final`` (if any) is moved aside, the temporary folder renamed to ``final``, and the old one
    removed. On an exception the temporary folder is deleted and the exception re-raised; ``final`` is
    untouched. The parent of ``final`` is created if missing.
    """
    final = Path(final)
    check_output_folder(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:  # mkdir (not mkdtemp) so the folder gets the usual umask permissions, not 0700
        temp = final.parent / f".{final.name}.{secrets.token_hex(4)}"
        try:
            temp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield temp
    except BaseException as err:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # bytes or inodes exhausted
            raise SpecError("output", f"no room left while writing {final} ({err.strerror}); nothing was written",
                            "free some space (or files: inodes) there, or choose another folder") from None
        raise
    old = None
    try:
        if final.exists() or final.is_symlink():
            old = final.parent / f"{temp.name}.old"
            os.replace(final, old)
        os.replace(temp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    logger.info("wrote %s", final)
