//! The bytes behind a parsed file: a read-only memory map or an owned buffer.

use std::fs::File;
use std::path::Path;

use crate::error::io_error;
use crate::{Result, TensorInfo, TensorView};

#[derive(Debug)]
pub(crate) enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps `path` read-only. Mapping reads nothing: pages are faulted in on first access.
    pub(crate) fn map(path: &Path) -> Result<Storage> {
        let file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len == 0 {
            // mmap(2) rejects empty mappings; an empty buffer parses to the same errors.
            return Ok(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and the crate's contract (documented on every `open`) is
        // that the file is not modified or truncated while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(path))?;
        Ok(Storage::Mapped(map))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }

    /// Drops the resident pages around `start..end` from this process. Later reads fault them in
    /// again from the page cache, so the data stays valid; only the resident set shrinks.
    ///
    /// The range is widened to 2 MiB boundaries: on a fault the kernel also maps neighbouring
    /// cached pages (fault-around, 64 KiB by default), which may belong to tensors released
    /// before. Releasing the wider window takes those back; a neighbour that is still to come is
    /// simply faulted in again.
    pub(crate) fn release(&self, start: u64, end: u64) {
        const WINDOW: u64 = 2 << 20;
        #[cfg(unix)]
        if let Storage::Mapped(map) = self {
            let start = (start / WINDOW) * WINDOW;
            let end = end.div_ceil(WINDOW).saturating_mul(WINDOW).min(map.len() as u64);
            if end > start {
                // SAFETY: the mapping is a read-only file mapping (`Mmap`, never `MmapMut`), so
                // MADV_DONTNEED cannot discard written data: a later access re-reads the same
                // bytes from the file. `start` is 2 MiB aligned (a multiple of any page size
                // up to 2 MiB) and the range is clamped to the mapping above.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        (end - start) as usize,
                    )
                };
            }
        }
        let _ = (start, end);
    }

    /// A zero-copy view of one validated tensor.
    pub(crate) fn view<'a>(&'a self, file: &'a str, info: &'a TensorInfo) -> TensorView<'a> {
        // Parsers only build infos whose ranges lie inside the file.
        let data = &self.bytes()[info.offset as usize..(info.offset + info.len) as usize];
        TensorView::new(file, info, data)
    }

    /// Visits `tensors` in order, releasing each one's pages once `visit` returns, so a pass
    /// over a whole checkpoint keeps about one tensor resident.
    pub(crate) fn stream<E>(
        &self,
        file: &str,
        tensors: &[TensorInfo],
        mut visit: impl FnMut(TensorView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for info in tensors {
            let outcome = visit(self.view(file, info));
            self.release(info.offset, info.offset + info.len);
            outcome?;
        }
        Ok(())
    }

    /// Resident bytes of the mapping in this process (Linux only, from `/proc/self/smaps`).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        let Storage::Mapped(map) = self else {
            return None;
        };
        resident_bytes_of(map.as_ptr() as usize)
    }
}

#[cfg(target_os = "linux")]
fn resident_bytes_of(address: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_mapping = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            in_mapping = lo <= address && address < hi;
            continue;
        }
        if in_mapping && let Some(rest) = line.strip_prefix("Rss:") {
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            return Some(kib * 1024);
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn resident_bytes_of(_address: usize) -> Option<u64> {
    None
}
