//! Files read once at start (the two config files, PEM files), read the way every input is: with a bound,
//! and without waiting on anything.

use std::io::{self, Read};

/// The first `max + 1` bytes of `path` (one more than allowed, so the caller can tell a file that is too
/// large and say so), when it is a regular file. The open cannot wait: opening a FIFO for reading blocks
/// until a writer comes, so it is opened non-blocking and refused after it.
pub fn read(path: &str, max: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("bmct-start-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"12345").unwrap();
        let p = f.to_str().unwrap();
        assert_eq!(read(p, 5).unwrap(), b"12345");
        assert_eq!(
            read(p, 3).unwrap(),
            b"1234",
            "one byte past the bound, no more"
        );
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(fifo.to_str().unwrap(), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(read(dir.to_str().unwrap(), 100).is_err());
        assert_eq!(
            read(dir.join("none").to_str().unwrap(), 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
