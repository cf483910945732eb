//! Replacing a file atomically: readers, a crash or a kill see the old file or the new one,
//! never half of one. Used for checkpoints here and for every derived file of `norm-cli`.

use std::fs::File;
use std::io;
use std::path::Path;

/// Writes `path` through a temporary file in the same folder (named `.{name}.XXXXXX{.ext}`, so
/// tools that go by the extension, such as an image encoder, still see it), `fsync`s it, renames
/// it over `path` (`tempfile`'s `NamedTempFile::persist`), then `fsync`s the folder so the
/// rename itself is durable. `write` gets the open temporary file and its path (some writers
/// only take a path). On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(&ext)
        .tempfile_in(dir)?;
    let tmp_path = tmp.path().to_owned();
    write(tmp.as_file_mut(), &tmp_path)?;
    // Same inode even if `write` reopened the path, so this syncs what it wrote.
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        // Best effort: some file systems refuse to sync a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn replaces_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, |f, _| f.write_all(b"one")).unwrap();
        write_atomic(&p, |f, tmp| {
            assert!(tmp.to_string_lossy().ends_with(".json"));
            f.write_all(b"two")
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let err = write_atomic(&p, |f, _| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
