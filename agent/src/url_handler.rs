//! The desktop's handler of `obr://` links: "Open Pairing Tool" in the
//! panel (+Passkey → Other platforms) hands `obr://pair?code=…` to the
//! desktop, which runs `obr-agent open URL` (freedesktop.org: a `.desktop`
//! file with `MimeType=x-scheme-handler/obr`, made the default in
//! `mimeapps.list`). Owns those two files for the current desktop user and
//! nothing else: the pairing itself is `tunnel::TunnelHandle::pair`.

use std::io;
use std::path::{Path, PathBuf};

/// The desktop file's name (its id, for `mimeapps.list`).
pub const DESKTOP_FILE: &str = "obr-agent.desktop";
const SCHEME: &str = "x-scheme-handler/obr";

/// Write the desktop file that runs this executable as `open %u` against
/// the agent's control socket `control`, and make it the default handler
/// of obr:// links; returns the desktop file's path.
pub fn register(control: &Path) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let control = std::path::absolute(control)?;
    let applications = data_home()?.join("applications");
    std::fs::create_dir_all(&applications)?;
    let desktop = applications.join(DESKTOP_FILE);
    std::fs::write(&desktop, desktop_entry(&exe, &control))?;
    let config = config_home()?;
    std::fs::create_dir_all(&config)?;
    let mimeapps = config.join("mimeapps.list");
    // A file that is there but cannot be read is not overwritten.
    let existing = match std::fs::read_to_string(&mimeapps) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    std::fs::write(&mimeapps, with_default(&existing))?;
    Ok(desktop)
}

fn desktop_entry(exe: &Path, control: &Path) -> String {
    format!(
        "[Desktop Entry]\nType=Application\nName=obr Pairing Tool\n\
         Comment=Act as a user's security key for an on-behalf registration\n\
         Exec={} --control {} open %u\nMimeType={SCHEME};\nNoDisplay=true\nTerminal=false\n",
        quoted(exe),
        quoted(control)
    )
}

/// An Exec argument, as the Desktop Entry Specification says: quoted, `"`,
/// `` ` ``, `$` and `\` escaped with a backslash inside the quotes, then
/// every backslash escaped again (the value is a string), and `%` doubled
/// (a field code otherwise).
fn quoted(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.display().to_string().chars() {
        match c {
            '"' | '`' | '$' => {
                out.push_str(r"\\");
                out.push(c);
            }
            '\\' => out.push_str(r"\\\\"),
            '%' => out.push_str("%%"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `mimeapps.list` text with obr:// links going to [`DESKTOP_FILE`], the
/// rest as it was.
fn with_default(existing: &str) -> String {
    let entry = format!("{SCHEME}={DESKTOP_FILE}");
    let mut out = Vec::new();
    let mut in_defaults = false;
    let mut written = false;
    for line in existing.lines() {
        if line.trim_start().starts_with('[') {
            if in_defaults && !written {
                out.push(entry.clone());
                written = true;
            }
            in_defaults = line.trim() == "[Default Applications]";
        } else if in_defaults && line.trim_start().starts_with(&format!("{SCHEME}=")) {
            continue;
        }
        out.push(line.to_owned());
    }
    if !written {
        if !in_defaults {
            out.push("[Default Applications]".to_owned());
        }
        out.push(entry);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn home() -> io::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "HOME is not set"))
}

fn data_home() -> io::Result<PathBuf> {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(home()?.join(".local/share")),
    }
}

fn config_home() -> io::Result<PathBuf> {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(home()?.join(".config")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_handler_is_set_once_and_the_rest_is_kept() {
        let fresh = with_default("");
        assert_eq!(
            fresh,
            "[Default Applications]\nx-scheme-handler/obr=obr-agent.desktop\n"
        );
        let existing = "[Default Applications]\ntext/html=firefox.desktop\nx-scheme-handler/obr=old.desktop\n[Added Associations]\nimage/png=eog.desktop\n";
        let updated = with_default(existing);
        assert_eq!(
            updated,
            "[Default Applications]\ntext/html=firefox.desktop\nx-scheme-handler/obr=obr-agent.desktop\n[Added Associations]\nimage/png=eog.desktop\n"
        );
        assert_eq!(with_default(&updated), updated, "idempotent");
        let other = with_default("[Added Associations]\nimage/png=eog.desktop\n");
        assert!(
            other.ends_with("[Default Applications]\nx-scheme-handler/obr=obr-agent.desktop\n"),
            "{other}"
        );
    }

    #[test]
    fn exec_arguments_are_quoted() {
        let entry = desktop_entry(
            Path::new("/opt/obr/bin/obr-agent"),
            Path::new("/home/a b/$x%.ctl"),
        );
        assert!(
            entry.contains(
                r#"Exec="/opt/obr/bin/obr-agent" --control "/home/a b/\\$x%%.ctl" open %u"#
            ),
            "{entry}"
        );
        assert!(entry.contains("MimeType=x-scheme-handler/obr;\n"));
    }
}
