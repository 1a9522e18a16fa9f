//! The relay's files are its own: the data directory is 0700 and the
//! databases in it 0600 before anything is written to them, so no other
//! local user reads people, hashes, the audit log or (embedded) the
//! signer's KEK and wrapped keys. SQLite gives its `-wal` and `-shm` files
//! the database file's mode.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;

/// Create `dir` if needed and make it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tighten(dir, PRIVATE_DIR)
}

/// Create `file` empty with mode 0600 if it does not exist; make an
/// existing one 0600.
pub fn private_file(file: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(file, PRIVATE_FILE),
        Err(e) => Err(e),
    }
}

fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        tracing::warn!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"),
            "tightening permissions");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
