//! The signer's modules are layered (`src/lib.rs`, "Layout"): each module
//! imports only from the modules before it in [`LAYERS`], so there is no
//! import circle and the CTAP core stands without the actors and the API
//! above it. This reads every source file outside tests and names each
//! `crate::` path that points to a later layer, to a module missing from
//! the order, or through the crate root's re-exports (which would hide the
//! real dependency).

use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: &[&str] = &[
    "call",
    "ids",
    "vault",
    "store",
    "redis_endpoint",
    "placement",
    "ctap",
    "error",
    "config",
    "direct",
    "actor",
    "api",
    "service",
];

/// Files that are not layered modules: the crate root declares and
/// re-exports them all; the binary uses the public API.
const OUTSIDE: &[&str] = &["lib.rs", "main.rs"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a source file belongs to: its first path component under
/// `src/`, without `.rs`.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let first = first.as_os_str().to_str().unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments, up to its first inline test
/// module (`#[cfg(test)]` on a `mod … {`; test modules close a file).
fn code(text: &str) -> String {
    let mut lines = Vec::new();
    let mut test_attribute = false;
    for line in text.lines() {
        let line = line.trim_start();
        let opens_mod = line.ends_with('{')
            && (line.starts_with("mod ") || line.starts_with("pub(crate) mod "));
        if test_attribute && opens_mod {
            break;
        }
        test_attribute = line == "#[cfg(test)]";
        if !line.starts_with("//") {
            lines.push(line);
        }
    }
    lines.join("\n")
}

/// Every `crate::` path in `code`: the identifier after it, or `{` for a
/// grouped import.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| {
            // Not `some_crate::` or `$crate::`.
            code[..*at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'))
        })
        .map(|(at, _)| {
            let rest = &code[at + "crate::".len()..];
            if rest.starts_with('{') {
                return "{".to_owned();
            }
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let name = relative.file_name().unwrap().to_str().unwrap();
        if (relative.components().count() == 1 && OUTSIDE.contains(&name)) || name == "tests.rs" {
            continue;
        }
        let module = module_of(relative);
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in LAYERS",
                relative.display()
            ));
            continue;
        };
        checked += 1;
        for path in crate_paths(&code(&std::fs::read_to_string(file).unwrap())) {
            let verdict = if path == "{" {
                Some("a grouped `crate::{…}` import: name each module".to_owned())
            } else if path.starts_with(char::is_uppercase) {
                Some(format!(
                    "`crate::{path}` goes through the crate root's re-exports"
                ))
            } else {
                match layer(&path) {
                    None => Some(format!("`crate::{path}` is not a module in LAYERS")),
                    Some(theirs) if theirs > own => {
                        Some(format!("`{module}` imports `{path}`, a layer above it"))
                    }
                    Some(_) => None,
                }
            };
            if let Some(verdict) = verdict {
                wrong.push(format!("{}: {verdict}", relative.display()));
            }
        }
    }
    wrong.dedup();
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The walk saw the modules (a moved `src/` would pass vacuously).
    assert!(checked >= LAYERS.len(), "only {checked} files checked");
}

#[test]
fn the_checker_sees_upward_grouped_and_root_imports() {
    let code = code(
        "use crate::api::SignerCore;\n// use crate::service::serve;\n\
         use crate::{ids, vault};\nlet x = $crate::m;\nuse crate::Kek;\n\
         use other_crate::x;\n#[cfg(test)]\npub(crate) mod test_support {\n\
         use crate::actor::A;\n}",
    );
    assert_eq!(crate_paths(&code), ["api", "{", "Kek"]);
}
