"""A FUSE passthrough filesystem that loses what was not fsynced, as a power cut does.

It mirrors a backing directory. Metadata operations (create, mkdir, rename, unlink,
chmod...) go straight to the backing directory, but file data written without a later
fsync/fdatasync on that file (or an O_SYNC/O_DSYNC handle) stays in this process's memory,
page by page, the way a kernel page cache holds it. Reads see the buffered data, so the
program on top cannot tell, until SIGUSR1 arrives: then every unsynced write is dropped,
exactly what a power loss does to a page cache. The chaos runner SIGKILLs the node first,
sends SIGUSR1, waits for the status file to report the drop, and restarts the node.
(This is the idea of Jepsen's LazyFS, written for pyfuse3 and trio.)

Every file handle is opened with direct_io so the kernel's own page cache never serves
data this process has dropped; entry and attribute timeouts are 0 for the same reason.

    python -m deploy.chaos.lazyfs BACKING_DIR MOUNTPOINT --status STATUS.json

Status file (JSON, rewritten after mount and after each drop): {"mounted": true,
"drops": N, "dropped_bytes": B, "dropped_files": F, "pending_bytes": P}. SIGTERM/SIGINT
unmount and exit. Needs /dev/fuse, fusermount3 and pyfuse3 (`pip install pyfuse3`, built
against libfuse3-dev).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import stat
import sys

PAGE = 4096


def available() -> tuple[bool, str]:
    """Can this machine mount the filesystem? (ok, reason when not)."""
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse is missing (no FUSE in this kernel/container)"
    if shutil.which("fusermount3") is None:
        return False, "fusermount3 is not installed (Debian: apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return False, f"pyfuse3 is not importable ({exc}); pip install pyfuse3 (needs libfuse3-dev, pkg-config)"
    return True, ""


class Dirty:
    """The unsynced state of one file: whole pages written since its last fsync.

    `floor` is how much of the backing file is still valid under this state (a truncate
    below the backing size lowers it), `size` the file's size as the program sees it."""

    __slots__ = ("size", "floor", "pages")

    def __init__(self, backing_size: int):
        self.size = backing_size
        self.floor = backing_size
        self.pages: dict[int, bytearray] = {}


def _make_ops():
    import pyfuse3

    class LazyOps(pyfuse3.Operations):
        supports_dot_lookup = False
        enable_writeback_cache = False

        def __init__(self, backing: str):
            super().__init__()
            self.root = os.fsencode(os.path.abspath(backing))
            self.root_ino = os.lstat(self.root).st_ino
            self.paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: self.root}
            self.fds: dict[int, int] = {}          # fh (backing fd) -> inode
            self.append: set[int] = set()          # fhs opened with O_APPEND
            self.sync: set[int] = set()            # fhs opened with O_SYNC / O_DSYNC
            self.dirty: dict[int, Dirty] = {}
            self.drops = 0
            self.dropped_bytes = 0
            self.dropped_files = 0

        # ---- inodes and attributes -------------------------------------------------
        def ino(self, st_ino: int) -> int:
            return pyfuse3.ROOT_INODE if st_ino == self.root_ino else st_ino

        def path(self, inode: int) -> bytes:
            try:
                return self.paths[inode]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None

        def child(self, parent: int, name: bytes) -> bytes:
            return os.path.join(self.path(parent), name)

        def attrs(self, st: os.stat_result) -> "pyfuse3.EntryAttributes":
            a = pyfuse3.EntryAttributes()
            inode = self.ino(st.st_ino)
            a.st_ino = inode
            a.generation = 0
            a.entry_timeout = 0
            a.attr_timeout = 0
            a.st_mode = st.st_mode
            a.st_nlink = st.st_nlink
            a.st_uid = st.st_uid
            a.st_gid = st.st_gid
            a.st_rdev = st.st_rdev
            d = self.dirty.get(inode)
            a.st_size = d.size if d is not None else st.st_size
            a.st_blksize = 4096
            a.st_blocks = (a.st_size + 511) // 512
            a.st_atime_ns = st.st_atime_ns
            a.st_mtime_ns = st.st_mtime_ns
            a.st_ctime_ns = st.st_ctime_ns
            return a

        def stat_inode(self, inode: int) -> os.stat_result:
            for fh, ino in self.fds.items():  # an open handle survives unlink
                if ino == inode:
                    return os.fstat(fh)
            return os.lstat(self.path(inode))

        def remember(self, path: bytes) -> "pyfuse3.EntryAttributes":
            st = os.lstat(path)
            self.paths[self.ino(st.st_ino)] = path
            return self.attrs(st)

        # ---- unsynced data -----------------------------------------------------------
        def backing_read(self, fh: int, off: int, size: int, limit: int) -> bytes:
            if off >= limit:
                return b""
            return os.pread(fh, min(size, limit - off), off)

        def state(self, inode: int, fh: int) -> Dirty:
            d = self.dirty.get(inode)
            if d is None:
                d = self.dirty[inode] = Dirty(os.fstat(fh).st_size)
            return d

        def page(self, d: Dirty, fh: int, n: int) -> bytearray:
            p = d.pages.get(n)
            if p is None:
                p = bytearray(PAGE)
                old = self.backing_read(fh, n * PAGE, PAGE, d.floor)
                p[: len(old)] = old
                d.pages[n] = p
            return p

        def read_range(self, inode: int, fh: int, off: int, size: int) -> bytes:
            d = self.dirty.get(inode)
            if d is None:
                return os.pread(fh, size, off)
            end = min(off + size, d.size)
            out = bytearray()
            pos = off
            while pos < end:
                n, within = divmod(pos, PAGE)
                take = min(PAGE - within, end - pos)
                p = d.pages.get(n)
                if p is not None:
                    out += p[within: within + take]
                else:
                    chunk = self.backing_read(fh, pos, take, d.floor)
                    out += chunk + bytes(take - len(chunk))
                pos += take
            return bytes(out)

        def write_range(self, inode: int, fh: int, off: int, buf: bytes) -> None:
            d = self.state(inode, fh)
            pos, i = off, 0
            while i < len(buf):
                n, within = divmod(pos, PAGE)
                take = min(PAGE - within, len(buf) - i)
                self.page(d, fh, n)[within: within + take] = buf[i: i + take]
                pos += take
                i += take
            d.size = max(d.size, off + len(buf))

        def truncate(self, inode: int, fh: int, size: int) -> None:
            d = self.state(inode, fh)
            if size < d.size:
                for n in [n for n in d.pages if n * PAGE >= size]:
                    del d.pages[n]
                n, within = divmod(size, PAGE)
                if within and n in d.pages:
                    d.pages[n][within:] = bytes(PAGE - within)
                d.floor = min(d.floor, size)
            d.size = size

        def flush_inode(self, inode: int, fh: int) -> None:
            """fsync: make the unsynced state of inode durable in the backing file."""
            d = self.dirty.pop(inode, None)
            if d is not None:
                if d.floor < os.fstat(fh).st_size:
                    os.ftruncate(fh, d.floor)
                for n in sorted(d.pages):
                    start = n * PAGE
                    if start < d.size:
                        os.pwrite(fh, bytes(d.pages[n][: min(PAGE, d.size - start)]), start)
                if os.fstat(fh).st_size != d.size:
                    os.ftruncate(fh, d.size)
            os.fsync(fh)

        def drop(self) -> None:
            """Power loss: forget every write that was not fsynced."""
            self.drops += 1
            self.dropped_files += len(self.dirty)
            self.dropped_bytes += sum(len(d.pages) * PAGE for d in self.dirty.values())
            self.dirty.clear()

        def status(self) -> dict:
            return {"mounted": True, "drops": self.drops, "dropped_bytes": self.dropped_bytes,
                    "dropped_files": self.dropped_files,
                    "pending_bytes": sum(len(d.pages) * PAGE for d in self.dirty.values()),
                    "pending_files": len(self.dirty)}

        # ---- FUSE handlers -------------------------------------------------------------
        async def lookup(self, parent_inode, name, ctx=None):
            try:
                return self.remember(self.child(parent_inode, name))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def getattr(self, inode, ctx=None):
            try:
                return self.attrs(self.stat_inode(inode))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def setattr(self, inode, attr, fields, fh, ctx):
            try:
                path = self.paths.get(inode)
                if fields.update_size:
                    own = fh if fh is not None and fh in self.fds else None
                    fd = own if own is not None else os.open(self.path(inode), os.O_RDWR)
                    try:
                        self.truncate(inode, fd, attr.st_size)
                    finally:
                        if own is None:
                            os.close(fd)
                target = fh if fh is not None and fh in self.fds else path
                if target is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                if fields.update_mode:
                    os.chmod(target, stat.S_IMODE(attr.st_mode))
                if fields.update_uid or fields.update_gid:
                    os.chown(target, attr.st_uid if fields.update_uid else -1,
                             attr.st_gid if fields.update_gid else -1)
                if fields.update_atime or fields.update_mtime:
                    st = self.stat_inode(inode)
                    atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                    mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                    os.utime(target, ns=(atime, mtime))
                return self.attrs(self.stat_inode(inode))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def readlink(self, inode, ctx):
            try:
                return os.readlink(self.path(inode))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def opendir(self, inode, ctx):
            self.path(inode)
            return inode

        async def readdir(self, fh, start_id, token):
            path = self.path(fh)
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            for i, name in enumerate(names[start_id:], start_id):
                try:
                    attr = self.remember(os.path.join(path, name))
                except OSError:
                    continue
                if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                    break

        async def releasedir(self, fh):
            return None

        async def fsyncdir(self, fh, datasync):
            try:
                fd = os.open(self.path(fh), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def mkdir(self, parent_inode, name, mode, ctx):
            path = self.child(parent_inode, name)
            try:
                os.mkdir(path, mode)
                return self.remember(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def rmdir(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            try:
                ino = self.ino(os.lstat(path).st_ino)
                os.rmdir(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            if self.paths.get(ino) == path:
                del self.paths[ino]

        async def unlink(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            try:
                st = os.lstat(path)
                os.unlink(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            ino = self.ino(st.st_ino)
            if self.paths.get(ino) == path:
                del self.paths[ino]
            if st.st_nlink <= 1 and ino not in self.fds.values():
                self.dirty.pop(ino, None)

        async def symlink(self, parent_inode, name, target, ctx):
            path = self.child(parent_inode, name)
            try:
                os.symlink(target, path)
                return self.remember(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def link(self, inode, new_parent_inode, new_name, ctx):
            path = self.child(new_parent_inode, new_name)
            try:
                os.link(self.path(inode), path)
                return self.attrs(os.lstat(path))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
            if flags:
                raise pyfuse3.FUSEError(errno.EINVAL)
            old = self.child(parent_inode_old, name_old)
            new = self.child(parent_inode_new, name_new)
            try:
                try:
                    replaced = os.lstat(new)
                except FileNotFoundError:
                    replaced = None
                os.rename(old, new)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            if replaced is not None:
                rino = self.ino(replaced.st_ino)
                if self.paths.get(rino) == new:
                    del self.paths[rino]
                if not stat.S_ISDIR(replaced.st_mode) and replaced.st_nlink <= 1 and rino not in self.fds.values():
                    self.dirty.pop(rino, None)
            prefix = old + b"/"
            for ino, p in list(self.paths.items()):
                if p == old:
                    self.paths[ino] = new
                elif p.startswith(prefix):
                    self.paths[ino] = new + p[len(old):]

        async def mknod(self, parent_inode, name, mode, rdev, ctx):
            path = self.child(parent_inode, name)
            try:
                os.mknod(path, mode, rdev)
                return self.remember(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        def file_info(self, fd: int, inode: int, flags: int) -> "pyfuse3.FileInfo":
            self.fds[fd] = inode
            if flags & os.O_APPEND:
                self.append.add(fd)
            if flags & (os.O_SYNC | os.O_DSYNC):
                self.sync.add(fd)
            return pyfuse3.FileInfo(fh=fd, direct_io=True, keep_cache=False)

        async def open(self, inode, flags, ctx):
            try:
                fd = os.open(self.path(inode), os.O_RDWR if not flags & os.O_PATH else os.O_PATH)
            except PermissionError:
                fd = os.open(self.path(inode), os.O_RDONLY)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            if flags & os.O_TRUNC:
                self.truncate(inode, fd, 0)
            return self.file_info(fd, inode, flags)

        async def create(self, parent_inode, name, mode, flags, ctx):
            path = self.child(parent_inode, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            attr = self.remember(path)
            if flags & os.O_TRUNC:
                self.truncate(attr.st_ino, fd, 0)
                attr = self.attrs(os.fstat(fd))
            return self.file_info(fd, attr.st_ino, flags), attr

        async def read(self, fh, off, size):
            try:
                return self.read_range(self.fds[fh], fh, off, size)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def write(self, fh, off, buf):
            inode = self.fds[fh]
            try:
                if fh in self.append:
                    d = self.dirty.get(inode)
                    off = d.size if d is not None else os.fstat(fh).st_size
                self.write_range(inode, fh, off, buf)
                if fh in self.sync:
                    self.flush_inode(inode, fh)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            return len(buf)

        async def fsync(self, fh, datasync):
            try:
                self.flush_inode(self.fds[fh], fh)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno) from None

        async def flush(self, fh):
            return None  # close(2) does not make data durable

        async def release(self, fh):
            inode = self.fds.pop(fh, None)
            self.append.discard(fh)
            self.sync.discard(fh)
            os.close(fh)
            if inode is not None and inode not in self.fds.values() and inode not in self.paths:
                self.dirty.pop(inode, None)  # unlinked and closed: nothing can read it again

        async def statfs(self, ctx):
            st = os.statvfs(self.root)
            s = pyfuse3.StatvfsData()
            for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                         "f_favail", "f_namemax"):
                setattr(s, attr, getattr(st, attr))
            return s

        async def access(self, inode, mode, ctx):
            return True

        async def forget(self, inode_list):
            return None

    return LazyOps


def write_status(path: str | None, status: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def serve(backing: str, mountpoint: str, status_path: str | None, debug: bool = False) -> None:
    import pyfuse3
    import trio

    ops = _make_ops()(backing)
    options = set(pyfuse3.default_options)
    options.add("fsname=lazyfs")
    if debug:
        options.add("debug")
    pyfuse3.init(ops, mountpoint, options)

    async def main():
        async with trio.open_nursery() as nursery:
            async def signals():
                with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as sigs:
                    write_status(status_path, ops.status())
                    async for sig in sigs:
                        if sig == signal.SIGUSR1:
                            ops.drop()
                            write_status(status_path, ops.status())
                        else:
                            pyfuse3.terminate()
                            return
            nursery.start_soon(signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        status = ops.status()
        status["mounted"] = False
        write_status(status_path, status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.chaos.lazyfs", description=__doc__.splitlines()[0])
    ap.add_argument("backing", help="directory that holds the durable data")
    ap.add_argument("mountpoint", help="where the node's store directory is mounted")
    ap.add_argument("--status", help="JSON status file, rewritten after mount and after each drop")
    ap.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = ap.parse_args(argv)
    ok, reason = available()
    if not ok:
        print(f"lazyfs: {reason}", file=sys.stderr)
        return 2
    serve(args.backing, args.mountpoint, args.status, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
