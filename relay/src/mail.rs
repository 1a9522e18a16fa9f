//! Mail to people, out of band: an invitation's secret reaches the invited
//! user, never the admin who invited them (an admin holding it could accept
//! for the user and hold their "phone").
//!
//! [`Mailer`] sends through SMTP ([`lettre`]: `smtps://` TLS, or
//! `smtp://…?tls=required` STARTTLS) when the relay has `--smtp-url`; the
//! embedded default is an [`Outbox`] folder: each message is one RFC 5322
//! `.eml` file (0600, in a 0700 folder) that an operator's mail relay, or
//! a person, delivers. Nothing here logs a message body.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::clock::now_ms;

/// How long one SMTP command may take before the mail fails.
pub const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad SMTP URL: {0}")]
    Url(String),
    #[error(
        "{0} would send the SMTP password unencrypted to another host: use smtps:// or \
         smtp://…?tls=required"
    )]
    PlaintextPassword(String),
    #[error("bad mail address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("the SMTP server refused or did not answer: {0}")]
    Smtp(String),
    #[error("cannot write to the outbox: {0}")]
    Outbox(#[from] io::Error),
}

/// Where mail to people goes.
#[derive(Clone)]
pub enum Mailer {
    /// Files in a folder (the embedded default).
    Outbox(Outbox),
    /// An SMTP server, as `from`.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        /// The server, for logs (never the password).
        server: String,
    },
}

impl Mailer {
    /// Mail through the SMTP server at `url` (lettre's URL form), from
    /// `from` (`Name <address>`). A password over plain `smtp://` to
    /// anything but this machine is refused.
    pub fn smtp(url: &str, from: &str) -> Result<Self, MailError> {
        let parsed = ::url::Url::parse(url).map_err(|e| MailError::Url(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        // As lettre reads it: the first `tls` parameter.
        let encrypted = parsed.scheme() == "smtps"
            || parsed
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .is_some_and(|(_, v)| v == "required");
        if parsed.password().is_some() && !encrypted && !loopback {
            return Err(MailError::PlaintextPassword(format!(
                "{}://{host}",
                parsed.scheme()
            )));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::Url(e.to_string()))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address {
                address: from.to_owned(),
                reason: e.to_string(),
            })?;
        let server = format!(
            "{}://{host}:{}",
            parsed.scheme(),
            parsed
                .port()
                .map_or_else(|| "default".to_owned(), |p| p.to_string())
        );
        Ok(Mailer::Smtp {
            transport,
            from,
            server,
        })
    }

    /// Send `mail`; says where it went (a file, or the server).
    pub async fn send(&self, mail: &Mail) -> Result<String, MailError> {
        match self {
            Mailer::Outbox(outbox) => Ok(outbox.send(mail)?.display().to_string()),
            Mailer::Smtp {
                transport,
                from,
                server,
            } => {
                let to: Mailbox = mail
                    .to
                    .parse()
                    .map_err(|e: lettre::address::AddressError| MailError::Address {
                        address: mail.to.clone(),
                        reason: e.to_string(),
                    })?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject.clone())
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.body.clone())
                    .map_err(|e| MailError::Build(e.to_string()))?;
                transport
                    .send(message)
                    .await
                    .map_err(|e| MailError::Smtp(e.to_string()))?;
                tracing::info!(to = %mail.to, subject = %mail.subject, %server, "mail sent");
                Ok(server.clone())
            }
        }
    }
}

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
