"""What a data path is, found by `stat` alone: nothing is opened before it is known to be a
regular file (a FIFO would block the reader forever, `/dev/zero` would never end)."""

from __future__ import annotations

import stat
from pathlib import Path

from avlsi.errors import UserError, clip

SPECIAL_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def kind_of(path: Path, what: str = "") -> str:
    """'file', 'folder', 'missing', or what else it is ('a FIFO (named pipe)', ...);
    `what` names the setting in an error (e.g. 'dataset.path')."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:  # a name too long, a loop of links, a folder we may not enter
        shown = f"{what}={clip(path)}" if what else clip(path)
        raise UserError(f"{shown} cannot be examined: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return next((kind for test, kind in SPECIAL_KINDS.items() if test(mode)), "not a file")


def require_file_or_folder(path: Path, what: str) -> str:
    """'file' or 'folder'; a UserError for anything else, saying what it is."""
    kind = kind_of(path, what)
    if kind == "missing":
        raise UserError(f"{what}={clip(path)} does not exist; pass the path of your data file")
    if kind not in ("file", "folder"):
        raise UserError(
            f"{what}={clip(path)} is {kind}, not a regular file: pass a data file or folder "
            "(AVLSI does not read from pipes or devices)"
        )
    return kind


def require_regular_file(path: Path, hint: str) -> None:
    """A UserError unless `path` is a regular file (a symlink to one is fine)."""
    kind = kind_of(path)
    if kind == "missing":
        raise UserError(f"{clip(path)} does not exist: {hint}")
    if kind != "file":
        what = "a folder" if kind == "folder" else kind
        raise UserError(f"{clip(path)} is {what}, not a regular file: {hint}")
