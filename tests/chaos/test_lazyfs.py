"""lazyfs: a passthrough FUSE filesystem that keeps unsynced writes in memory and drops them
on SIGUSR1 (power loss). Skipped, with the reason, where FUSE is not available."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deploy.chaos.lazyfs import available
from tests.conftest import ROOT

ok, reason = available()
pytestmark = pytest.mark.skipif(not ok, reason=f"power-loss filesystem unavailable: {reason}")


class Mount:
    def __init__(self, tmp_path):
        self.backing = tmp_path / "backing"
        self.mnt = tmp_path / "mnt"
        self.status_path = tmp_path / "status.json"
        self.backing.mkdir()
        self.mnt.mkdir()
        self.log = open(tmp_path / "lazyfs.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.chaos.lazyfs", str(self.backing), str(self.mnt),
                                      "--status", str(self.status_path)], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.status().get("mounted"):
            assert self.proc.poll() is None and time.monotonic() < deadline, "lazyfs did not mount"
            time.sleep(0.05)

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def power_loss(self) -> dict:
        drops = self.status().get("drops", 0)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self.status().get("drops", 0) == drops:
            assert time.monotonic() < deadline, "no drop reported"
            time.sleep(0.02)
        return self.status()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        self.log.close()


@pytest.fixture
def fs(tmp_path):
    m = Mount(tmp_path)
    yield m
    m.close()


def write(path, data: bytes, *, sync: bool = False, flags: int = 0, offset: int | None = None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_writes_are_visible_until_power_loss(fs):
    m = fs.mnt
    write(m / "unsynced", b"a" * 10_000)
    write(m / "synced", b"durable", sync=True)
    write(m / "synced", b"-later", offset=7)  # appended after the fsync, never synced
    write(m / "dsync", b"o_dsync", flags=os.O_DSYNC)
    (m / "dir").mkdir()
    write(m / "dir" / "f", b"in a dir", sync=True)
    os.rename(m / "dir", m / "moved")
    # before the crash, the program sees everything it wrote
    assert (m / "unsynced").read_bytes() == b"a" * 10_000
    assert (m / "synced").read_bytes() == b"durable-later"
    assert os.path.getsize(m / "synced") == 13
    assert sorted(os.listdir(m)) == ["dsync", "moved", "synced", "unsynced"]
    # the backing directory has only what was synced
    assert (fs.backing / "unsynced").read_bytes() == b""
    assert (fs.backing / "synced").read_bytes() == b"durable"

    st = fs.power_loss()
    assert st["drops"] == 1 and st["dropped_files"] == 2 and st["pending_bytes"] == 0
    assert (m / "unsynced").read_bytes() == b""          # created (metadata is durable), data gone
    assert (m / "synced").read_bytes() == b"durable"      # the unsynced tail is gone
    assert (m / "dsync").read_bytes() == b"o_dsync"       # O_DSYNC writes are durable at once
    assert (m / "moved" / "f").read_bytes() == b"in a dir"


def test_truncate_append_and_overwrite_follow_posix(fs):
    m = fs.mnt
    write(m / "f", b"0123456789", sync=True)
    with open(m / "f", "r+b") as f:
        f.truncate(4)
        f.seek(0, os.SEEK_END)
        f.write(b"xy")
    assert (m / "f").read_bytes() == b"0123xy"
    with open(m / "f", "r+b") as f:
        f.truncate(8)  # extends with zeros, not with the old backing bytes
    assert (m / "f").read_bytes() == b"0123xy\0\0"
    with open(m / "f", "ab") as f:
        f.write(b"!")
    assert (m / "f").read_bytes() == b"0123xy\0\0!"
    big = bytes(range(256)) * 40  # spans pages
    write(m / "f", big, offset=3000)
    data = (m / "f").read_bytes()
    assert data[:9] == b"0123xy\0\0!" and data[3000:] == big and data[9:3000] == bytes(2991)

    fd = os.open(m / "f", os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    fs.power_loss()
    assert (m / "f").read_bytes() == data  # everything was synced
    assert (fs.backing / "f").read_bytes() == data


def test_power_loss_undoes_an_unsynced_truncate(fs):
    m = fs.mnt
    write(m / "f", b"keep me", sync=True)
    with open(m / "f", "r+b") as f:
        f.truncate(0)
    assert (m / "f").read_bytes() == b""
    fs.power_loss()
    assert (m / "f").read_bytes() == b"keep me"


def test_unlink_and_replace_by_rename(fs):
    m = fs.mnt
    write(m / "a", b"old", sync=True)
    write(m / "tmp", b"new", sync=True)
    os.rename(m / "tmp", m / "a")  # the write-temp-then-rename pattern stores use
    assert (m / "a").read_bytes() == b"new"
    os.unlink(m / "a")
    assert not (m / "a").exists() and not (fs.backing / "a").exists()
    fs.power_loss()
    assert os.listdir(m) == []
