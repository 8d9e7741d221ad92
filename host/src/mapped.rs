//! Files mapped into memory as [`Bytes`]: a large keyed-state base is looked up where it lies in
//! the page cache, so its pages are read from disk when touched and dropped by the kernel when
//! memory is short, instead of being the process's own memory (which cannot be dropped).

use std::fs::File;

use bytes::Bytes;

/// Files smaller than this are read rather than mapped: a mapping costs a system call and a page
/// table of its own, which only pays for large files.
pub(crate) const MAP_AT_LEAST: u64 = 1 << 20;

/// `file`'s bytes, mapped read-only; they stay valid while any clone of the result lives, even
/// once the file is renamed over or deleted.
pub(crate) fn map(file: &File) -> std::io::Result<Bytes> {
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
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
}
