#!/usr/bin/env python3
"""The data disk's own limits, measured on the filesystem of --dir (where the cluster's
data lives), for the benchmark suite. Prints one JSON object:

- seq_write_mb_per_sec: 1 GiB written sequentially in 1 MiB writes through the page
  cache, then fsync; the time includes the fsync (as `dd conv=fsync`). The median of
  three runs (each in seq_write_runs). MB = 10^6 bytes.
- seq_write_direct_mb_per_sec: the same with O_DIRECT (aligned 1 MiB buffers, no page
  cache): what the device itself takes. On a VM, buffered writes that must grow the
  page cache into memory the guest has not touched recently can be several times slower
  than both this and writes that reuse freed cache pages; see the Benchmarks section of the README.
- fsync_4k_per_sec: 4 KiB appended to one file and fsynced, repeatedly, one writer:
  durable small writes per second when nothing batches them.
- fsync_4k_per_sec_16: the same with 16 writers on 16 files at once (the disk's
  parallelism for independent durable writes).
- with --small-only, only the two figures above (bench/seaweedfs.sh's reference).
- create_4k_per_sec, create_4k_per_sec_16: what one datanode does per small object: a
  new file with 4 KiB, fsync, hard link into a directory, fsync of that directory.
- create_1m_mb_per_sec_12: the same for 1 MiB objects as a datanode writes them (O_DIRECT,
  a 4 KiB block with the footer, the file cut back to its length), 12 writers: three
  nodes on this one disk each writing for 4 clients, as the R = 3 1 MiB PUT benchmark
  does. What one file per object can reach on this disk.
- append_1m_mb_per_sec_12: 12 writers appending 1 MiB O_DIRECT writes, each followed by
  fdatasync, to one preallocated file: what records in a volume file could reach.
- append_1m_group_mb_per_sec_12: the same, but the writers share their fdatasyncs as
  the datanode's volumes do (group commit: a writer waits for a sync that started after
  its write, and the first without one in flight starts it). The best records in a
  volume could do on this disk with nothing else in the way: no network, no checksums.

Python only drives the loops; every measured operation is a system call that waits for
the disk, so the interpreter's overhead is a few microseconds per operation.
"""
import argparse
import json
import mmap
import os
import shutil
import sys
import threading
import time

MiB = 1 << 20


def seq_write(directory, total, direct=False):
    """Writes `total` bytes in 1 MiB pieces and fsyncs; with `direct`, past the page cache
    (O_DIRECT needs a page-aligned buffer, which an anonymous mmap is)."""
    path = os.path.join(directory, "seq-direct" if direct else "seq")
    if direct:
        chunk = mmap.mmap(-1, MiB)
        chunk.write(os.urandom(MiB))
    else:
        chunk = os.urandom(MiB)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o600)
    try:
        start = time.perf_counter()
        written = 0
        while written < total:
            written += os.write(fd, chunk)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return written / elapsed / 1e6


def fsync_4k(path, seconds, limit, counts, index):
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    n = 0
    try:
        deadline = time.perf_counter() + seconds
        while n < limit and time.perf_counter() < deadline:
            os.write(fd, block)
            os.fsync(fd)
            n += 1
    finally:
        os.close(fd)
        os.unlink(path)
    counts[index] = n


def create_4k(directory, seconds, limit, counts, index):
    """New file, 4 KiB, fsync, hard link into place, directory fsync: a datanode's PUT."""
    block = os.urandom(4096)
    tmp = os.path.join(directory, f"tmp-{index}")
    objects = os.path.join(directory, f"objects-{index}")
    os.makedirs(directory, exist_ok=True)
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(objects, exist_ok=True)
    dir_fd = os.open(objects, os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    try:
        deadline = time.perf_counter() + seconds
        while n < limit and time.perf_counter() < deadline:
            temp = os.path.join(tmp, str(n))
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, block)
            os.fsync(fd)
            os.close(fd)
            os.link(temp, os.path.join(objects, str(n)))
            os.fsync(dir_fd)
            os.unlink(temp)
            n += 1
    finally:
        os.close(dir_fd)
    counts[index] = n


def create_1m(directory, seconds, limit, counts, index):
    """A datanode's PUT of a 1 MiB object: new file, 1 MiB and a footer block by O_DIRECT,
    cut back to its length, fsync, hard link into a new fan-out directory as most links of
    a young node are, fsync of both directories."""
    body, footer = mmap.mmap(-1, MiB), mmap.mmap(-1, 4096)
    body.write(os.urandom(MiB))
    tmp = os.path.join(directory, f"tmp-{index}")
    objects = os.path.join(directory, f"objects-{index}")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(objects, exist_ok=True)
    n = 0
    deadline = time.perf_counter() + seconds
    while n < limit and time.perf_counter() < deadline:
        temp = os.path.join(tmp, str(n))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
        try:
            os.pwrite(fd, body, 0)
            os.pwrite(fd, footer, MiB)
            os.ftruncate(fd, MiB + 32)
            os.fsync(fd)
        finally:
            os.close(fd)
        leaf = os.path.join(objects, str(n))
        os.mkdir(leaf)
        fsync_dir(objects)
        os.link(temp, os.path.join(leaf, "object"))
        fsync_dir(leaf)
        os.unlink(temp)
        n += 1
    counts[index] = n * MiB / 1e6


class GroupSync:
    """Leader/follower fdatasync for the writers of one file (as `volume.rs` does)."""

    def __init__(self, fd):
        self.fd = fd
        self.cond = threading.Condition()
        self.written = 0  # writes finished, numbered from 1
        self.synced = 0  # every write up to this one is durable
        self.in_flight = False

    def wrote(self):
        """Called after a write finished: returns once a sync that started after it did."""
        with self.cond:
            self.written += 1
            mine = self.written
            while self.synced < mine:
                if self.in_flight:
                    self.cond.wait()
                    continue
                self.in_flight = True
                upto = self.written
                self.cond.release()
                try:
                    os.fdatasync(self.fd)
                finally:
                    self.cond.acquire()
                    self.in_flight = False
                    self.synced = max(self.synced, upto)
                    self.cond.notify_all()


def append_1m(shared, seconds, limit, counts, index):
    """1 MiB O_DIRECT writes at the next free offset of one preallocated file, written
    at once by the writers, each followed by its own fdatasync or, with a GroupSync,
    made durable by a shared one."""
    fd, lock, offsets, size, group = shared
    body = mmap.mmap(-1, MiB)
    body.write(os.urandom(MiB))
    n = 0
    deadline = time.perf_counter() + seconds
    while n < limit and time.perf_counter() < deadline:
        with lock:
            offset = offsets[0]
            offsets[0] += MiB
        if offset + MiB > size:
            break
        os.pwrite(fd, body, offset)
        if group is None:
            os.fdatasync(fd)
        else:
            group.wrote()
        n += 1
    counts[index] = n * MiB / 1e6


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def one_megabyte_writes(work, seconds):
    """create_1m_mb_per_sec_12, append_1m_mb_per_sec_12 and append_1m_group_mb_per_sec_12
    (see the module's text)."""
    result = {}
    result["create_1m_mb_per_sec_12"] = parallel(create_1m, 12, seconds, 1_000_000, lambda i: (os.path.join(work, "c1m"),))
    size = 4 << 30
    path = os.path.join(work, "volume")
    # A new file for each, so that neither writes over space the other has written.
    for key, group in (("append_1m_mb_per_sec_12", False), ("append_1m_group_mb_per_sec_12", True)):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            shared = (fd, threading.Lock(), [0], size, GroupSync(fd) if group else None)
            result[key] = parallel(append_1m, 12, seconds, 1_000_000, lambda i: (shared,))
        finally:
            os.close(fd)
            os.unlink(path)
    return result


def parallel(target, writers, seconds, limit, args):
    counts = [0] * writers
    threads = [threading.Thread(target=target, args=(*args(i), seconds, limit, counts, i)) for i in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, help="a directory on the data disk")
    parser.add_argument("--seq-bytes", type=int, default=1 << 30)
    parser.add_argument("--seconds", type=float, default=3.0, help="per small-write measurement")
    parser.add_argument(
        "--keep", action="store_true", help="leave the files written (in the 'work' directory the JSON names)"
    )
    parser.add_argument(
        "--small-only", action="store_true", help="only the fsync'd 4 KiB appends (for bench/seaweedfs.sh)"
    )
    args = parser.parse_args()

    work = os.path.join(args.dir, f"disk-bench-{os.getpid()}")
    os.makedirs(work)
    limit = 1_000_000
    try:
        result = {"dir": os.path.abspath(args.dir), "seq_bytes": args.seq_bytes}
        if args.small_only:
            result["fsync_4k_per_sec"] = parallel(fsync_4k, 1, args.seconds, limit, lambda i: (os.path.join(work, f"f{i}"),))
            result["fsync_4k_per_sec_16"] = parallel(
                fsync_4k, 16, args.seconds, limit, lambda i: (os.path.join(work, f"f{i}"),)
            )
            print(json.dumps(result))
            return 0
        runs = [seq_write(work, args.seq_bytes) for _ in range(3)]
        result["seq_write_runs"] = runs
        result["seq_write_mb_per_sec"] = sorted(runs)[1]
        try:
            result["seq_write_direct_mb_per_sec"] = seq_write(work, args.seq_bytes, direct=True)
        except OSError as error:  # a filesystem without O_DIRECT (tmpfs)
            result["seq_write_direct_mb_per_sec"] = None
            result["seq_write_direct_error"] = str(error)
        result["fsync_4k_per_sec"] = parallel(fsync_4k, 1, args.seconds, limit, lambda i: (os.path.join(work, f"f{i}"),))
        result["fsync_4k_per_sec_16"] = parallel(
            fsync_4k, 16, args.seconds, limit, lambda i: (os.path.join(work, f"f{i}"),)
        )
        result["create_4k_per_sec"] = parallel(
            create_4k, 1, args.seconds, limit, lambda i: (os.path.join(work, "create-1"),)
        )
        result["create_4k_per_sec_16"] = parallel(
            create_4k, 16, args.seconds, limit, lambda i: (os.path.join(work, "create-16"),)
        )
        try:
            result.update(one_megabyte_writes(work, args.seconds))
        except OSError as error:  # a filesystem without O_DIRECT or fallocate
            result["one_megabyte_error"] = str(error)
        result["work"] = os.path.abspath(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
