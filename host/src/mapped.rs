//! Files mapped into memory as [`Bytes`]: a large keyed-state base is looked up where it lies in
//! the page cache, so its pages are read from disk when touched and dropped by the kernel when
//! memory is short, instead of being the process's own memory (which cannot be dropped).
//!
//! Lookups by key touch pages at random, so a mapping is advised as such: the kernel then reads
//! only the page a lookup touches, not the pages after it. With read-ahead, a 10M-key state in a
//! 300 MB memory limit read the disk at 1.3 GB/s for pages it did not use and did not restore in
//! ten minutes; advised, it restored and compacted in 16 s (see the README's Performance).

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// Files smaller than this are read rather than mapped: a mapping costs a system call and a page
/// table of its own, which only pays for large files.
pub(crate) const MAP_AT_LEAST: u64 = 1 << 20;

/// `file`'s bytes, mapped read-only for lookups at random; they stay valid while any clone of
/// the result lives, even once the file is renamed over or deleted.
pub(crate) fn map(file: &File) -> std::io::Result<Bytes> {
    let map = map_file(file)?;
    map.advise(memmap2::Advice::Random)?;
    Ok(Bytes::from_owner(map))
}

/// [`map`], with `check` reading the bytes front to back first (a seal's checksum over every
/// byte) while the kernel still reads ahead. What `check` returns stays valid like `map`'s bytes.
pub(crate) fn map_checked<E>(
    file: &File,
    check: impl FnOnce(Bytes) -> Result<Bytes, E>,
) -> std::io::Result<Result<Bytes, E>> {
    let map = Arc::new(map_file(file)?);
    let checked = check(Bytes::from_owner(SharedMap(Arc::clone(&map))));
    map.advise(memmap2::Advice::Random)?;
    Ok(checked)
}

/// A mapping shared by the [`Bytes`] over it and [`map_checked`], which advises the kernel about
/// it once checked.
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    #[allow(
        unsafe_code,
        reason = "a mapping is unsafe because another process could change the file under it"
    )]
    // SAFETY: Weir maps only the state files it writes: a checkpoint's state files, which are
    // written once under a unique name (to a temporary file renamed into place) and never written
    // again, only deleted; and its spill files, which are unlinked when created, so no other
    // process can open them. Renaming over or deleting a mapped file leaves the mapping valid.
    // What remains is someone truncating a checkpoint's state file by hand, which makes reading
    // the lost part fault: no different from deleting the checkpoint directory under a process.
    unsafe {
        memmap2::Mmap::map(file)
    }
}
