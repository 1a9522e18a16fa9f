//! [`TestCa`]: a private certificate authority for one test, made with the
//! openssl CLI (`scripts/test` installs it): P-256 keys, one-day certificates
//! for 127.0.0.1 and localhost, for a server (`serverAuth`) or a client
//! (`clientAuth`). Stands in for a deployment's own PKI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What a certificate is for.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    Server,
    Client,
}

pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A CA named `name` (its files are `<name>-ca.pem` and `<name>-ca.key`
    /// in `dir`).
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        let (cert, key) = (ca.file("ca.pem"), ca.file("ca.key"));
        let subject = format!("/CN={name} test CA");
        let mut args = vec!["req", "-x509"];
        args.extend(EC_KEY);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            &subject,
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(dir, &args)?;
        Ok(ca)
    }

    /// The CA certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join(self.file("ca.pem"))
    }

    /// Issue `<name>.pem` and `<name>.key` for 127.0.0.1 and localhost.
    pub fn issue(&self, name: &str, usage: Usage) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (csr, cert, key, ext) = (
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.cnf"),
        );
        let mut args = vec!["req"];
        args.extend(EC_KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        openssl(&self.dir, &args)?;
        let purpose = match usage {
            Usage::Server => "serverAuth",
            Usage::Client => "clientAuth",
        };
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage={purpose}\n"
            ),
        )?;
        let (ca_cert, ca_key) = (self.file("ca.pem"), self.file("ca.key"));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        )?;
        Ok((self.dir.join(cert), self.dir.join(key)))
    }

    fn file(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("openssl is not installed (scripts/test installs it)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
