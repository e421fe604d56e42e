//! The RocksDB database under the journal: its column families and the
//! options each one is tuned with.

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use super::{dir, space, JournalError, CF_FRAMES, CF_META, CF_REQUESTS, CF_SESSIONS, CF_UPSTREAM};
use crate::config::JournalConfig;

/// Range deletes (trims, purges) a memtable of `frames` holds before it is
/// flushed.
const MEMTABLE_MAX_RANGE_DELETIONS: u32 = 1000;

/// Opens (or creates) the database with every column family.
pub(super) fn open_db(config: &JournalConfig) -> Result<DB, JournalError> {
    // A restart after a failed write replays the WAL into memtables without
    // writing new SST files first, so it needs little free space. The old
    // WAL is kept until the memtables are flushed. The option has no setter
    // in the `rocksdb` crate.
    let mut opts = Options::default().get_options_from_string("avoid_flush_during_recovery=true")?;
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    space::recover_from_full_disk(&mut opts);
    // The largest memtable is also the free space RocksDB waits for before
    // it resumes writes after a full disk (and about what a WAL file
    // preallocates): `journal.memtable_bytes`, not RocksDB's 64 MiB.
    let memtable = config.memtable_bytes;
    opts.set_write_buffer_size(memtable);
    // A WAL file is deleted only once every column family with data in it
    // has been flushed. The small families (`sessions`, `upstream`, ...)
    // rarely fill a memtable, so without a cap the WAL grew by 100 MiB a
    // minute in a 10-minute soak, towards RocksDB's default cap (about
    // 3 GiB with six families of 64 MiB memtables). Past this size RocksDB
    // flushes the families that hold the oldest WAL file. One memtable's
    // worth: the WAL holds pointers, not frames, so flushes stay rare (43
    // against 48 in 4 minutes at 35,000 msg/s, the same CPU and bytes
    // written), and the largest journal of that run fell from 472 MiB at
    // 4 memtables to 278 MiB (docs/BENCHMARKS.md).
    opts.set_max_total_wal_size(memtable as u64);
    // RocksDB's info LOG grows with every flush and compaction, and with
    // trims flushing the pointer memtable (below) that is ~100 a minute at
    // full speed: 4 MiB in a 10-minute soak, without end by default. Keep
    // four files of 8 MiB, enough for the last few thousand flushes.
    opts.set_max_log_file_size(8 << 20);
    opts.set_keep_log_file_num(4);
    // Most frames are replayed or trimmed while they are young: the memtable
    // flush (L0) and the first compaction (L1) write them uncompressed, which
    // was a sixth of tether's CPU time at 512 B (docs/BENCHMARKS.md); data
    // that lives long enough to reach L2 and below is compressed with lz4.
    let mut small = Options::default();
    small.set_write_buffer_size(memtable);
    // One thread inserts every chunk, and each session's chunks arrive in
    // key order: a per-session insert hint (the first 16 key bytes) turns
    // the memtable's skiplist search, 7 % of tether's CPU at 1,000 sessions
    // × 20 msg/s, into a step from the session's last insert, for ~250
    // bytes per session with frames in the memtable. RocksDB ignores hints
    // in concurrent memtable writes, which one writer does not need.
    opts.set_allow_concurrent_memtable_write(false);
    // Range tombstones in the memtable are re-fragmented by every iterator
    // (each trim's count of what it kills, each replay's read), so each one
    // makes every journal read slower until the memtable is flushed; bound
    // them. A memtable takes this bound when it is created, so it must be
    // set before the database opens: set afterwards (as it was until
    // December 2026), it reached only the memtables after the first flush,
    // and a memtable of 24-byte pointers can go minutes without one. Trimming
    // 100 sessions flat out at `max_session_frames` 1,344, fragmenting was
    // 45 % of tether's CPU and the rate fell to a fifth within a minute
    // (docs/BENCHMARKS.md, "Range deletions").
    let mut frames = Options::default().get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.16;\
         memtable_max_range_deletions={MEMTABLE_MAX_RANGE_DELETIONS}"
    ))?;
    frames.set_write_buffer_size(memtable);
    use rocksdb::DBCompressionType::{Lz4, None as Plain};
    frames.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
    let cfs = vec![
        // Named, or the `rocksdb` crate adds it with RocksDB's default
        // 64 MiB memtable, which would be the recovery reserve.
        ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, small.clone()),
        ColumnFamilyDescriptor::new(CF_FRAMES, frames),
        ColumnFamilyDescriptor::new(CF_SESSIONS, small.clone()),
        // Added after layout 2 was released: RocksDB creates it in an
        // older journal (`create_missing_column_families`).
        ColumnFamilyDescriptor::new(CF_UPSTREAM, small.clone()),
        ColumnFamilyDescriptor::new(CF_REQUESTS, small.clone()),
        ColumnFamilyDescriptor::new(CF_META, small),
    ];
    let db =
        DB::open_cf_descriptors(&opts, &config.data_dir, cfs).map_err(|e| dir::explain_open(&config.data_dir, e))?;
    Ok(db)
}
