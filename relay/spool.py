"""The durable spool: what the relay has promised to deliver, on disk in data_dir.

A message is one file, `<id>.spool`: a JSON header line (envelope, copies, tokens), the message
bytes, then one JSON line per event (a copy about to be committed upstream, its outcome, a report
sent, the store caught up). The file is fsync'd, and so is the folder, before the client hears
250; events are appended, so the file's tail is the whole history and a restart reads the state
back from it. Nothing is ever rewritten in place, so a crash can cut at most the last line.

Exactly once rests on one event: `committing` is written and fsync'd just before the final dot
of a copy's DATA. A copy whose last event is `committing` may have reached the upstream, so after
a crash it is never sent again: it is reported as uncertain.

Durability is shared (group commit, as databases do): messages and commit records arriving
together wait for one flush to disk rather than one each (`GroupCommit`). "Accepted" still
means on disk: nobody returns before the flush that covers their file.

Several processes may share one spool (`--workers`): whoever works on an entry holds an
exclusive `flock` on its file, which the kernel drops if that process dies. A process also holds
a lock on its own owner file for its lifetime, so others can tell whether the process that holds
a message's credentials in memory is still alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIX = ".spool"
FORMAT = 1

# Copy statuses as the spool records them. Final ones never change again.
QUEUED, COMMITTING = "queued", "committing"
ACCEPTED, REJECTED, DEFERRED = "accepted", "rejected", "deferred"
UNCERTAIN, EXPIRED, DROPPED = "uncertain", "expired", "dropped"
FINAL = frozenset({ACCEPTED, REJECTED, UNCERTAIN, EXPIRED, DROPPED})
# Answers of claim_message_id.
CLAIMED, TAKEN, BUSY = "claimed", "taken", "busy"


class SpoolError(Exception):
    """The spool cannot take a message (disk full, folder not writable): the client hears 451."""


class EntryBusy(Exception):
    """Another process is working on this entry right now."""


@dataclass
class CopyState:
    """One copy for one recipient, as the spool's events leave it."""

    index: int
    recipient: str
    token: str
    tracked: bool
    guard: bool = False  # the Sent-folder guard copy: sent, but not a delivery
    status: str = QUEUED
    code: int = 0
    reply: str = ""
    attempts: int = 0
    next_try: float = 0.0
    reported: bool = False  # the sender was told of its failure (client reply or report)
    warned: bool = False  # a delay warning went out for it

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class Entry:
    """A spooled message: its header, and the state its events add up to."""

    id: str
    path: Path
    header: dict[str, Any]
    data_offset: int
    copies: list[CopyState]
    recorded: bool = False  # message and deliveries are in the store
    synced: dict[int, str] = field(default_factory=dict)  # copy -> status the store has
    fd: int | None = None  # open and flock'ed while someone works on it

    @property
    def arrival(self) -> float:
        return float(self.header["arrival"])

    def read_data(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.data_offset)
            return f.read(int(self.header["size"]))

    def done(self) -> bool:
        """Everything is final, every failure reported, and the store knows it: remove it."""
        return all(c.final and (c.reported or c.status == ACCEPTED) for c in self.copies) and (
            self.recorded and all(self.synced.get(c.index) == c.status for c in self.deliveries())
        )

    def deliveries(self) -> list[CopyState]:
        return [c for c in self.copies if not c.guard]

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state (also used while reading the file back)."""
        kind = event["e"]
        if kind == "recorded":
            self.recorded = True
            return
        if kind == "synced":
            for k, v in event["s"].items():
                self.synced[int(k)] = v
            return
        copy = self.copies[event["c"]]
        if kind == "status":
            copy.status = event["s"]
            copy.code = event.get("code", copy.code)
            copy.reply = event.get("reply", copy.reply)
            copy.attempts = event.get("attempts", copy.attempts)
            copy.next_try = event.get("next", copy.next_try)
        elif kind == "reported":
            copy.reported = True
        elif kind == "warned":
            copy.warned = True
        elif kind == "retry":
            copy.next_try = 0.0


class GroupCommit:
    """One flush to disk for every file that needs one at about the same time.

    Callers run in worker threads (the spool's writes are kept off the event loop), so this
    is a thread-safe batcher: the first caller leads, gathers for `window` seconds (or until
    `batch` are waiting), then makes the whole batch durable at once and wakes everyone in
    it; callers that arrive while a flush runs form the next batch. Several files are flushed
    with one `syncfs` of the spool's file system (Linux), one alone with its own fsync; the
    folder, for new names, with one fsync. A failed flush fails every caller in its batch."""

    def __init__(self, directory: Path, *, window: float = 0.001, batch: int = 64) -> None:
        self.directory = directory
        self.window = window
        self.batch = batch
        self.flushes = 0  # batches made durable (tests and curious operators)
        self._cond = threading.Condition()
        self._fds: list[int] = []
        self._folder = False
        self._leading = False
        self._gathering = 1  # number of the batch now taking callers
        self._done = 0  # every batch up to this number is flushed
        self._failed: dict[int, OSError] = {}

    def sync(self, fd: int | None, *, folder: bool = False) -> None:
        """Return once `fd`'s data (and, with `folder`, the spool folder's names) is on disk."""
        with self._cond:
            if fd is not None:
                self._fds.append(fd)
            self._folder |= folder
            mine = self._gathering
            while self._done < mine:
                if not self._leading:
                    self._lead()
                    continue
                if len(self._fds) >= self.batch:
                    self._cond.notify_all()  # the gathering leader need not wait longer
                self._cond.wait()
            error = self._failed.get(mine)
        if error is not None:
            raise OSError(error.errno, f"flushing the spool: {error.strerror}")

    def _lead(self) -> None:
        """Gather, flush (without the lock, so the next batch can gather), and wake the batch.
        Called and returns with the condition's lock held."""
        self._leading = True
        deadline = time.monotonic() + self.window
        while len(self._fds) < self.batch and (left := deadline - time.monotonic()) > 0:
            self._cond.wait(left)
        number, fds, folder = self._gathering, self._fds, self._folder
        self._gathering, self._fds, self._folder = number + 1, [], False
        self._cond.release()
        error: BaseException | None = None
        try:
            _flush(self.directory, fds, folder)
        except BaseException as exc:  # noqa: BLE001 - the batch is told, then it is re-raised
            error = exc
        finally:
            self._cond.acquire()
        self.flushes += 1
        if error is not None:
            failed = error if isinstance(error, OSError) else OSError(errno.EIO, repr(error))
            self._failed[number] = failed
        for old in [n for n in self._failed if n < number - 1000]:
            del self._failed[old]
        self._done = number
        self._leading = False  # whatever happened: the next batch must find no leader
        self._cond.notify_all()
        if error is not None and not isinstance(error, OSError):
            raise error


def _flush(directory: Path, fds: list[int], folder: bool) -> None:
    """Make `fds` (and the folder's names, if asked) durable, in as few calls as it takes."""
    if len(fds) > 1 and _SYNCFS is not None:
        _syncfs(directory)  # every file of the spool's file system, and its folders
        return
    for fd in fds:
        os.fsync(fd)
    if folder:
        _fsync_dir(directory)


def _load_syncfs():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def _syncfs(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path, owner: str | None = None) -> None:
        self.directory = directory
        self.commits = GroupCommit(directory)
        self.seen_dir = directory / "seen"
        self.owners_dir = directory / "owners"
        self.owner = owner or f"{os.getpid()}-{secrets.token_hex(4)}"
        self._owner_fd: int | None = None

    def open(self) -> None:
        """Create the folders and take this process's owner lock (held until exit)."""
        for d in (self.directory, self.seen_dir, self.owners_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.owners_dir / f"{self.owner}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._owner_fd = fd

    def close(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None
            (self.owners_dir / f"{self.owner}.lock").unlink(missing_ok=True)

    def owner_alive(self, owner: str) -> bool:
        """Whether the process that spooled a message still runs (and holds its password)."""
        if owner == self.owner:
            return True
        path = self.owners_dir / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # a dead owner's file: tidy it up
        return False

    # --- putting a message in -------------------------------------------------------------

    def put(self, header: dict[str, Any], data: bytes, entry_id: str | None = None) -> Entry:
        """Write, flush, rename into place and flush the folder; the entry comes back locked.
        Both flushes are shared with whatever else is spooled at the same time; the data is on
        disk before the name, so a file under its final name is always whole.

        Only after this returns may the client be told 250."""
        entry_id = entry_id or self.new_id()
        header = {**header, "v": FORMAT, "id": entry_id, "size": len(data), "owner": self.owner}
        head = json.dumps(header, separators=(",", ":")).encode() + b"\n"
        final = self.directory / f"{entry_id}{SUFFIX}"
        tmp = self.directory / f".{entry_id}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                _write_all(fd, head)
                _write_all(fd, data)
                _write_all(fd, b"\n")
                self.commits.sync(fd)
                os.rename(tmp, final)
                self.commits.sync(None, folder=True)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc
        return Entry(
            id=entry_id,
            path=final,
            header=header,
            data_offset=len(head),
            copies=_copies(header),
            fd=fd,
        )

    # --- reading back ---------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Entries in arrival order (their ids start with the arrival time)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX))

    def path(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}{SUFFIX}"

    def load(self, entry_id: str) -> Entry:
        """Read an entry's state without locking it (for listing)."""
        return _read(self.path(entry_id))

    def acquire(self, entry_id: str, *, wait: bool = False) -> Entry:
        """The entry, locked until `release`; EntryBusy if another process works on it,
        FileNotFoundError if it is gone (finished by whoever held it before us)."""
        path = self.path(entry_id)
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EntryBusy(entry_id) from None
            if not path.exists():
                raise FileNotFoundError(path)
            entry = _read(path)
        except BaseException:
            os.close(fd)
            raise
        entry.fd = fd
        return entry

    @contextlib.contextmanager
    def locked(self, entry_id: str, *, wait: bool = False) -> Iterator[Entry]:
        """Hold the entry for as long as the block runs."""
        entry = self.acquire(entry_id, wait=wait)
        try:
            yield entry
        finally:
            self.release(entry)

    def release(self, entry: Entry) -> None:
        if entry.fd is not None:
            os.close(entry.fd)
            entry.fd = None

    # --- events ---------------------------------------------------------------------------

    def append(self, entry: Entry, *events: dict[str, Any], sync: bool = False) -> None:
        """Record events (the caller holds the entry). `sync` waits for the disk: needed before
        anything that cannot be undone, such as the final dot of a copy."""
        assert entry.fd is not None, "append needs the entry locked"
        blob = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
        os.lseek(entry.fd, 0, os.SEEK_END)
        _write_all(entry.fd, blob)
        if sync:
            self.commits.sync(entry.fd)
        for e in events:
            entry.apply(e)

    def remove(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)

    # --- re-submissions -------------------------------------------------------------------

    def claim_message_id(self, sender: str, message_id: str, window: float) -> str:
        """CLAIMED the first time (sender, Message-ID) is seen within `window` seconds; TAKEN if
        a message was spooled under it; BUSY while another live process is spooling it.

        O_EXCL makes the claim atomic across the processes that share this spool, so a client
        re-sending after a lost reply, even to another worker, is recognised. A claim names the
        entry it is for and that entry's process before the entry is written (`settle_claim`),
        and says `done` once the queue finished it, so a claim whose entry is missing and whose
        process died was never spooled: it is not mistaken for a message taken."""
        path = self._claim_path(sender, message_id)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                    words = path.read_text().split()
                except FileNotFoundError:
                    continue
                if age >= window:
                    path.unlink(missing_ok=True)
                    continue
                if words[:1] == ["done"]:
                    return TAKEN
                if words[:1] == ["spooled"] and len(words) == 4 and self.path(words[1]).exists():
                    return TAKEN
                owner = words[-1] if words else ""
                if self.owner_alive(owner):
                    return BUSY  # being spooled right now by a live process
                path.unlink(missing_ok=True)  # its process died before spooling: not taken
                continue
            try:
                _write_all(fd, f"claimed by {self.owner}".encode())
            finally:
                os.close(fd)
            return CLAIMED
        return BUSY

    def settle_claim(self, sender: str, message_id: str, entry_id: str) -> None:
        """The claim is for entry `entry_id`, written next (before it exists on disk)."""
        path = self._claim_path(sender, message_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"spooled {entry_id} by {self.owner}")
        os.replace(tmp, path)

    def finish_claim(self, claim: str, entry_id: str) -> None:
        """The queue is done with `entry_id` and removes it: its claim, if the client has not
        released it meanwhile, now says so (a re-submission is still not sent again)."""
        path = self.seen_dir / claim
        try:
            if path.read_text().split()[:2] != ["spooled", entry_id]:
                return
        except (FileNotFoundError, IndexError):
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"done {entry_id}")
        os.replace(tmp, path)

    def claim_name(self, sender: str, message_id: str) -> str:
        return self._claim_path(sender, message_id).name

    def new_id(self) -> str:
        return f"{int(time.time() * 1000):013d}-{secrets.token_hex(6)}"

    def _claim_path(self, sender: str, message_id: str) -> Path:
        key = hashlib.sha256(f"{sender.lower()}\0{message_id}".encode()).hexdigest()[:40]
        return self.seen_dir / key

    def unclaim_message_id(self, sender: str, message_id: str) -> None:
        """The message was not taken after all (the client heard 4xx/5xx), or the client
        heard its 250: it may come again, and is then a new message."""
        self._claim_path(sender, message_id).unlink(missing_ok=True)

    def prune_seen(self, window: float) -> int:
        """Forget Message-IDs older than the window, so the folder stays bounded."""
        removed = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.seen_dir):
                path = self.seen_dir / name
                if name.endswith(".tmp"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= window:
                        path.unlink()
                        removed += 1
        return removed

    def prune_temporary(self, older_than: float = 3600) -> None:
        """Half-written files of a process that died before its rename (never answered 250)."""
        now = time.time()
        for p in self.directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if now - p.stat().st_mtime > older_than:
                    p.unlink()


def _copies(header: dict[str, Any]) -> list[CopyState]:
    return [
        CopyState(
            index=i,
            recipient=c["rcpt"],
            token=c["token"],
            tracked=bool(c["tracked"]),
            guard=bool(c.get("guard")),
        )
        for i, c in enumerate(header["copies"])
    ]


def _read(path: Path) -> Entry:
    with open(path, "rb") as f:
        head = f.readline()
        header = json.loads(head)
        f.seek(len(head) + int(header["size"]) + 1)
        tail = f.read()
    entry = Entry(
        id=header["id"], path=path, header=header, data_offset=len(head), copies=_copies(header)
    )
    for line in tail.split(b"\n"):
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            break  # a line cut by a crash: nothing after it was written
        entry.apply(event)
    return entry


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
