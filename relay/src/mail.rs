//! Mail to people, out of band: an invitation's secret reaches the invited
//! user, never the admin who invited them (an admin holding it could accept
//! for the user and hold their "phone").
//!
//! The embedded default is an [`Outbox`] folder: each message is one
//! RFC 5322 `.eml` file (0600, in a 0700 folder) that an operator's mail
//! relay, or a person, delivers. A real mail transport comes with the
//! panel. Nothing here logs a message body.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::clock::now_ms;

/// One message.
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// A folder of messages waiting to be delivered.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox in `dir`, created 0700.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::files::private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `mail` as a new `.eml` file; returns its path.
    pub fn send(&self, mail: &Mail) -> io::Result<PathBuf> {
        let name = format!("{}-{}.eml", now_ms(), uuid::Uuid::new_v4().simple());
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // Header values come from us and from validated emails; refuse a
        // line break in them rather than let one start a new header.
        for value in [&mail.to, &mail.subject] {
            if value.contains(['\r', '\n']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "line break in a mail header",
                ));
            }
        }
        write!(
            file,
            "To: {}\r\nSubject: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            mail.to,
            mail.subject,
            mail.body.replace('\n', "\r\n")
        )?;
        file.sync_all()?;
        tracing::info!(to = %mail.to, subject = %mail.subject, path = %path.display(), "mail queued in the outbox");
        Ok(path)
    }
}
