//! A full disk is waited out in-process, not exited on.
//!
//! When a write fails with ENOSPC, RocksDB records a "hard" background error
//! and refuses every later write. Given an `SstFileManager`, RocksDB polls
//! the free space (every 5 s) and, once at least the largest memtable
//! (`journal.memtable_bytes`) is free, flushes the memtables and resumes
//! writes by itself: the writer only has to hold the failed batch and try
//! it again. The `rocksdb` crate has no setter for the manager, so it is
//! installed through the C API on the options' raw pointer.

use rocksdb::{AsRawPtr, ErrorKind, Options};

/// Installs a default `SstFileManager` in `opts`, which turns on RocksDB's
/// automatic recovery from a full disk.
pub(super) fn recover_from_full_disk(opts: &mut Options) {
    // SAFETY: `rocksdb_create_default_env` returns a fresh wrapper around the
    // process-wide default Env; the manager keeps what it needs of it
    // (clock, file system) in shared pointers, so the wrapper is destroyed
    // at once. `rocksdb_options_set_sst_file_manager` copies the manager's
    // shared pointer into the options (and the options into the database
    // when it opens), so destroying our wrapper after it only drops a
    // reference. `opts` outlives the call.
    unsafe {
        let env = librocksdb_sys::rocksdb_create_default_env();
        let sfm = librocksdb_sys::rocksdb_sst_file_manager_create(env);
        librocksdb_sys::rocksdb_options_set_sst_file_manager(opts.as_raw_ptr(), sfm);
        librocksdb_sys::rocksdb_sst_file_manager_destroy(sfm);
        librocksdb_sys::rocksdb_env_destroy(env);
    }
}

/// Whether a write failed because the disk is full: RocksDB recovers from
/// that by itself once space returns (see the module comment).
pub(super) fn is_full_disk(e: &rocksdb::Error) -> bool {
    // The status code is IOError; the subcode only shows in the message,
    // whose text is RocksDB's `Status::msgs[kNoSpace]`.
    e.kind() == ErrorKind::IOError && e.as_ref().contains("No space left on device")
}
