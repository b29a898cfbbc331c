"""Atomic output folders: assembled beside the target, renamed into place, and cleaned up after killed runs.

A conversion writes into a hidden sibling of the target, `.NAME.<host>.<pid>.<token>.partial`, and renames
it to NAME only when everything is written (and verified). Replacing an existing NAME moves it aside to
`.NAME.<host>.<pid>.<token>.old` for the instant of the swap. A run killed with SIGKILL (or a power cut)
cannot clean up after itself, so every run first removes the side entries of dead runs on this host: the
host tag and the pid in the name say whose they are, and a process that no longer exists cannot still be
writing. An `.old` whose NAME is missing is the previous output of a run killed mid-swap: it is put back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from types import TracebackType

# Side entries of runs on other machines sharing the folder must not be judged by this machine's pids.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_SIDE_ENTRY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.(?P<kind>partial|old)$"
)
# Staging folders of hf-pvt-convert before pids were recorded (tempfile.mkdtemp's random part).
_UNOWNED_STAGING = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.partial$")


class OutputFolderError(Exception):
    """The output folder cannot be created, replaced or cleaned; the message names the path and the fix."""


def side_entry(target: Path, kind: str, pid: int | None = None) -> Path:
    """A fresh `.NAME.<host>.<pid>.<token>.<kind>` path beside `target` (kind: "partial" or "old")."""
    pid = os.getpid() if pid is None else pid
    return target.with_name(f".{target.name}.{HOST_TAG}.{pid}.{secrets.token_hex(4)}.{kind}")


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clean_stale_entries(parent: Path) -> list[str]:
    """Remove (or restore) the side entries that dead runs on this host left in `parent`; say what was done."""
    notes: list[str] = []
    try:
        entries = sorted(parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return notes
    except OSError as error:
        raise OutputFolderError(f"Cannot list {parent}: {error.strerror or error}.") from error
    for entry in entries:
        match = _SIDE_ENTRY.match(entry.name)
        if match is None:
            if _UNOWNED_STAGING.match(entry.name) and entry.is_dir():
                notes.append(
                    f"{entry} looks like the staging folder of a conversion interrupted by an older "
                    "hf-pvt-convert (it records no process id); delete it if no conversion is running"
                )
            continue
        pid = int(match["pid"])
        if match["host"] != HOST_TAG or pid == os.getpid() or pid_is_alive(pid):
            continue
        target = entry.with_name(match["name"])
        try:
            if match["kind"] == "old" and not target.exists() and not target.is_symlink():
                os.rename(entry, target)
                notes.append(f"restored {target} from {entry.name}, left by an --overwrite that was interrupted")
            else:
                _remove(entry)
                notes.append(f"removed {entry.name}, left by a conversion (pid {pid}) that was killed")
        except OSError as error:
            notes.append(f"could not remove {entry} ({error.strerror or error}); delete it by hand")
    return notes


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_permissions(folder: Path) -> None:
    """Give `folder`'s files the mode a plain `open()` would (0666 less the umask).

    Some writers (safetensors through Transformers' `save_pretrained`) create private 0600 files; a model
    folder is meant to be shared like any other output."""
    file_mode = 0o666 & ~current_umask()
    for entry in folder.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, file_mode)
        elif entry.is_dir() and not entry.is_symlink():
            os.chmod(entry, 0o777 & ~current_umask())


def describe_os_error(error: OSError) -> str:
    """`<path>: <reason>` for an OSError, the way a shell would say it."""
    reason = error.strerror or (errno.errorcode.get(error.errno, "") if error.errno else "") or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


class OutputFolder:
    """Stage a folder beside `target` and swap it into place on `commit()`; on any failure leave no trace.

    Entering creates the missing parents of `target` and the staging folder (with the permissions `mkdir`
    gives, i.e. subject to the umask), so an unwritable destination is found before any work is done.
    Leaving without `commit()` removes the staging folder and the parents that were created.
    """

    def __init__(self, target: str | Path, overwrite: bool = False) -> None:
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        self.path: Path | None = None
        self._created_parents: list[Path] = []
        self._committed = False

    def __enter__(self) -> OutputFolder:
        missing = []
        parent = self.target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for folder in reversed(missing):
                os.mkdir(folder)
                self._created_parents.append(folder)
            for _ in range(8):
                staging = side_entry(self.target, "partial")
                try:
                    os.mkdir(staging)
                except FileExistsError:
                    continue
                self.path = staging
                break
            else:
                raise OutputFolderError(f"Cannot find a free staging name beside {self.target}.")
        except OSError as error:
            self._discard()
            raise OutputFolderError(
                f"Cannot create the output folder {self.target} ({describe_os_error(error)}). "
                "Choose a destination you can write to."
            ) from error
        return self

    def commit(self) -> Path:
        """Rename the staged folder to the target, replacing an existing target when `overwrite` allows it."""
        assert self.path is not None, "commit() outside the `with` block"
        old = None
        try:
            give_default_permissions(self.path)
            if self.target.exists() or self.target.is_symlink():
                if not self.overwrite:
                    raise OutputFolderError(f"{self.target} already exists; pass --overwrite to replace it.")
                old = side_entry(self.target, "old")
                os.rename(self.target, old)
            try:
                os.rename(self.path, self.target)
            except OSError:
                if old is not None:
                    os.rename(old, self.target)
                raise
        except OSError as error:
            raise OutputFolderError(
                f"Cannot move the converted folder into place at {self.target} ({describe_os_error(error)})."
            ) from error
        self._committed = True
        self.path = self.target
        if old is not None:
            try:
                _remove(old)
            except OSError as error:
                raise OutputFolderError(
                    f"The new folder is in place at {self.target}, but the replaced one could not be removed from "
                    f"{old} ({describe_os_error(error)}); delete it by hand."
                ) from error
        return self.target

    def _discard(self) -> None:
        if self.path is not None and not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        for folder in reversed(self._created_parents):
            try:
                folder.rmdir()  # only while still empty: never anything another process put there
            except OSError:
                break
        self._created_parents = []

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._committed:
            self._discard()
