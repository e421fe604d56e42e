//! What a journal did to the disk: a process's writes from `/proc/PID/io`,
//! what RocksDB flushed and compacted (from the `LOG` files in its
//! directory), and how much space the directory takes.
//!
//! Every reader here fails rather than answer 0 when it cannot read, so a
//! run that could not measure something says so instead of reporting a
//! flattering zero.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use serde::Serialize;

/// A process's storage writes (`/proc/PID/io`), bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Io {
    /// `write_bytes`: bytes it caused to be sent to storage (counted when
    /// the page is dirtied, so page-cache writes count before writeback).
    pub write_bytes: u64,
    /// `cancelled_write_bytes`: dirtied bytes that never reached storage
    /// because the file was truncated or deleted first.
    pub cancelled: u64,
}

impl Io {
    /// `self - earlier`, saturating.
    pub fn since(&self, earlier: &Io) -> Io {
        Io {
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
        }
    }
}

/// Reads `/proc/<pid>/io`.
pub fn io(pid: u32) -> anyhow::Result<Io> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .ok_or_else(|| anyhow!("{path} has no {name}"))
    };
    Ok(Io { write_bytes: field("write_bytes")?, cancelled: field("cancelled_write_bytes")? })
}

/// What RocksDB's event log (`EVENT_LOG_v1` lines of `LOG` and `LOG.old.*`)
/// says it wrote into SST files.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RocksLog {
    /// `LOG` files read.
    pub files: usize,
    /// Flushes (`flush_started` events).
    pub flushes: u64,
    /// Bytes of the SST files flushes wrote: `file_size` of the
    /// `table_file_creation` events whose `job` is a flush's.
    pub flushed: u64,
    /// Compactions (`compaction_finished` events).
    pub compactions: u64,
    /// Bytes compactions wrote: `total_output_size` of `compaction_finished`.
    pub compacted: u64,
    /// Bytes of the SST files compactions wrote: `file_size` of the
    /// `table_file_creation` events whose `job` is a compaction's. Unlike
    /// `compacted`, it counts the files a compaction still running at the
    /// end has finished.
    pub compaction_tables: u64,
    /// Bytes compactions read: `input_data_size` of `compaction_started`
    /// (a compaction still running included).
    pub compaction_input: u64,
    /// SST bytes of jobs that were neither (recovery): `file_size` of the
    /// other `table_file_creation` events.
    pub other_tables: u64,
}

/// Parses every RocksDB `LOG` file in `dir`. Fails if there is none.
pub fn rocks_log(dir: &Path) -> anyhow::Result<RocksLog> {
    let mut out = RocksLog::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "LOG" || name.starts_with("LOG.old") {
            let text = std::fs::read_to_string(entry.path())?;
            // Job ids restart with every open, which starts a new LOG.
            add_log(&mut out, &text);
            out.files += 1;
        }
    }
    if out.files == 0 {
        return Err(anyhow!("no RocksDB LOG file in {}", dir.display()));
    }
    Ok(out)
}

fn add_log(out: &mut RocksLog, text: &str) {
    let mut flush_jobs = HashSet::new();
    let mut tables = Vec::new();
    let mut compaction_jobs = HashSet::new();
    for line in text.lines() {
        let Some((_, json)) = line.split_once("EVENT_LOG_v1 ") else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { continue };
        let job = v["job"].as_u64();
        let num = |k: &str| v[k].as_u64().unwrap_or(0);
        match v["event"].as_str() {
            Some("flush_started") => {
                out.flushes += 1;
                flush_jobs.extend(job);
            }
            Some("compaction_started") => {
                out.compaction_input += num("input_data_size");
                compaction_jobs.extend(job);
            }
            Some("compaction_finished") => {
                out.compactions += 1;
                out.compacted += num("total_output_size");
            }
            Some("table_file_creation") => tables.push((job, num("file_size"))),
            _ => {}
        }
    }
    for (job, size) in tables {
        match job {
            Some(j) if flush_jobs.contains(&j) => out.flushed += size,
            Some(j) if compaction_jobs.contains(&j) => out.compaction_tables += size,
            _ => out.other_tables += size,
        }
    }
}

/// Space a directory tree takes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DirSize {
    /// Sum of the files' sizes.
    pub apparent: u64,
    /// Sum of their allocated blocks × 512, as `du` counts (RocksDB
    /// preallocates WAL files, so this is the larger).
    pub allocated: u64,
}

/// Walks `dir`; fails if it cannot be read.
pub fn dir_size(dir: &Path) -> anyhow::Result<DirSize> {
    let mut out = DirSize::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        // A file RocksDB deleted since the listing is no longer there.
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let sub = dir_size(&entry.path())?;
            out.apparent += sub.apparent;
            out.allocated += sub.allocated;
        } else {
            out.apparent += meta.len();
            out.allocated += meta.blocks() * 512;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_and_compactions_are_told_apart_by_job() {
        let log = r#"2026/12/07-10:00:00.000001 7f EVENT_LOG_v1 {"time_micros": 1, "job": 2, "event": "flush_started", "num_memtables": 1}
2026/12/07-10:00:00.000002 7f EVENT_LOG_v1 {"time_micros": 2, "cf_name": "frames", "job": 2, "event": "table_file_creation", "file_number": 9, "file_size": 1000}
2026/12/07-10:00:00.000003 7f [db/flush_job.cc:1] a line that is not an event
2026/12/07-10:00:00.000004 7f EVENT_LOG_v1 {"time_micros": 4, "job": 3, "event": "compaction_started", "input_data_size": 3000}
2026/12/07-10:00:00.000005 7f EVENT_LOG_v1 {"time_micros": 5, "cf_name": "frames", "job": 3, "event": "table_file_creation", "file_number": 10, "file_size": 2500}
2026/12/07-10:00:00.000006 7f EVENT_LOG_v1 {"time_micros": 6, "job": 3, "event": "compaction_finished", "total_output_size": 2500}
2026/12/07-10:00:00.000007 7f EVENT_LOG_v1 {"time_micros": 7, "job": 1, "event": "table_file_creation", "file_number": 4, "file_size": 70}"#;
        let mut r = RocksLog::default();
        add_log(&mut r, log);
        assert_eq!((r.flushes, r.flushed), (1, 1000));
        assert_eq!((r.compactions, r.compacted, r.compaction_input), (1, 2500, 3000));
        assert_eq!(r.compaction_tables, 2500);
        assert_eq!(r.other_tables, 70);
    }
}
