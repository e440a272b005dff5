//! Reading a cgroup's files with buffers kept per thread, so a sample allocates nothing once the
//! buffers have grown to fit, and learning from the reads whether the cgroup exists at all.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The first size of the contents buffer, which doubles from there; most cgroup files fit.
const STEP: usize = 4096;

/// A file bigger than this is not a cgroup file we know; it is refused rather than read on.
const MAX_FILE: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The buffers of one sample and what its reads found.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The cgroup directory being read, with a file name pushed on while it is read.
    path: PathBuf,
    /// The contents of the last file read, followed by stale bytes up to its length.
    text: Vec<u8>,
    /// Whether any file has been read in this sample.
    found: bool,
    /// The first failure in this sample other than a missing file.
    error: Option<io::Error>,
}

/// Runs one sample with this thread's scratch buffers.
pub(crate) fn with<T>(sample: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.found = false;
            scratch.error = None;
            sample(&mut scratch)
        }
        // Only reachable if a sample started another on the same thread; fresh buffers do.
        Err(_) => sample(&mut Scratch::default()),
    })
}

impl Scratch {
    /// Makes `hierarchy/parent/name` the directory that [`Scratch::read`] reads from.
    pub(crate) fn enter(&mut self, hierarchy: &Path, parent: &str, name: &str) {
        self.path.as_mut_os_string().clear();
        self.path.push(hierarchy);
        self.path.push(parent);
        self.path.push(name);
    }

    /// The contents of `file` in the current directory, or `None` when it cannot be read or is
    /// not UTF-8.
    pub(crate) fn read(&mut self, file: &str) -> Option<&str> {
        self.path.push(file);
        let result = read_into(&self.path, &mut self.text);
        self.path.pop();
        match result {
            Ok(len) => {
                self.found = true;
                std::str::from_utf8(&self.text[..len]).ok()
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::NotFound && self.error.is_none() {
                    self.error = Some(err);
                }
                None
            }
        }
    }

    /// Ends a sample read from `hierarchies`: the sample if any file was read; else the first
    /// real failure; else the (empty) sample if the cgroup directory exists in some hierarchy;
    /// else `NotFound`.
    pub(crate) fn finish<'a, T>(
        &mut self,
        sample: T,
        hierarchies: impl IntoIterator<Item = &'a Path>,
        parent: &str,
        name: &str,
    ) -> io::Result<T> {
        if self.found {
            return Ok(sample);
        }
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        let mut searched = Vec::new();
        for hierarchy in hierarchies {
            self.enter(hierarchy, parent, name);
            if self.path.is_dir() {
                return Ok(sample);
            }
            searched.push(hierarchy.display().to_string());
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no cgroup `{parent}/{name}` under {}: the service is not running",
                if searched.is_empty() {
                    "any hierarchy (none is mounted)".to_owned()
                } else {
                    searched.join(", ")
                }
            ),
        ))
    }
}

/// Reads the whole of `path` into `buf` and returns its length. `buf` is kept zero-filled to its
/// full length and only grows, so reads after the first few neither allocate nor clear it. A
/// file costs three system calls (open, read, close): no size probe as `std::fs::read` makes,
/// useless on cgroup files (all claim 0 or 4096 bytes), and no read just to see the end.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut file = File::open(path)?;
    if buf.is_empty() {
        buf.resize(STEP, 0);
    }
    let mut len = 0;
    loop {
        if len == buf.len() {
            if len >= MAX_FILE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is larger than {MAX_FILE} bytes", path.display()),
                ));
            }
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => return Ok(len),
            // The kernel renders a cgroup file whole (one seq_file record) before the first
            // read returns, so a read that leaves room has returned the rest: no read for EOF.
            Ok(read) if len + read < buf.len() => return Ok(len + read),
            Ok(read) => len += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_of_any_size_into_the_same_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let big = "8:0 Read 1\n".repeat(1000);
        std::fs::create_dir_all(dir.path().join("shg/camera")).unwrap();
        std::fs::write(dir.path().join("shg/camera/big"), &big).unwrap();
        std::fs::write(dir.path().join("shg/camera/small"), "42\n").unwrap();
        let mut scratch = Scratch::default();
        scratch.enter(dir.path(), "shg", "camera");
        assert_eq!(scratch.read("big"), Some(big.as_str()));
        assert_eq!(scratch.read("small"), Some("42\n"));
        assert_eq!(scratch.read("missing"), None);
        assert!(scratch.found);
        assert!(scratch.error.is_none());
    }

    #[test]
    fn an_unreadable_file_is_remembered_as_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shg/camera/memory.current")).unwrap();
        let mut scratch = Scratch::default();
        scratch.enter(dir.path(), "shg", "camera");
        // Reading a directory fails with something other than NotFound.
        assert_eq!(scratch.read("memory.current"), None);
        let err = scratch
            .finish((), [dir.path()], "shg", "camera")
            .unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shg/camera")).unwrap();
        std::fs::write(dir.path().join("shg/camera/huge"), vec![b'1'; MAX_FILE + 1]).unwrap();
        let mut scratch = Scratch::default();
        scratch.enter(dir.path(), "shg", "camera");
        assert_eq!(scratch.read("huge"), None);
        assert_eq!(scratch.error.unwrap().kind(), io::ErrorKind::InvalidData);
    }
}
