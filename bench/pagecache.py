#!/usr/bin/env python3
"""What writing a long file costs the kernel, with and without drop-behind.

Reproduces, without tether, the experiment behind the frame log's
drop-behind (docs/BENCHMARKS.md, "Drop-behind"; src/journal/dropbehind.rs):
write GIB GiB in 1 MiB writes to a new file and report the system CPU.

  plain  leave the page cache to the kernel
  kick   start the write-back every 8 MiB (sync_file_range WRITE)
  drop   kick, and drop from the cache (fadvise DONTNEED) what lies more
         than 128 MiB behind the write point

Usage: python3 bench/pagecache.py plain|kick|drop GIB [DIR]   (Linux only;
DIR defaults to /var/tmp and must be on a real disk, not tmpfs)
"""
import ctypes
import os
import resource
import sys
import time

SYNC_FILE_RANGE_WRITE = 2
KICK = 8 << 20
KEEP = 128 << 20


def main():
    mode, gib = sys.argv[1], int(sys.argv[2])
    if mode not in ("plain", "kick", "drop"):
        sys.exit(__doc__)
    path = os.path.join(sys.argv[3] if len(sys.argv) > 3 else "/var/tmp", "pagecache-test")
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    buf = os.urandom(1 << 20)
    total = gib << 30
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    kicked = dropped = off = 0
    try:
        while off < total:
            off += os.write(fd, buf)
            if mode != "plain" and off - kicked >= KICK:
                libc.sync_file_range(fd, kicked, off - kicked, SYNC_FILE_RANGE_WRITE)
                kicked = off
                if mode == "drop" and kicked - dropped >= KEEP + KICK:
                    os.posix_fadvise(fd, dropped, kicked - KEEP - dropped, os.POSIX_FADV_DONTNEED)
                    dropped = kicked - KEEP
    finally:
        os.close(fd)
        os.unlink(path)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{mode} {gib} GiB: {time.time() - t0:.2f} s elapsed, "
          f"{after.ru_stime - before.ru_stime:.2f} s system, {after.ru_utime - before.ru_utime:.2f} s user")


if __name__ == "__main__":
    main()
