//! KEK rotation without downtime: credentials made under KEK A, a rotation
//! to B while a signer holding both keeps signing, then signers holding
//! only B (every credential signs) or only A (refused, naming B). On both
//! backends. And the `obr-signer new-kek` / `rotate-kek` commands: counts,
//! idempotence, a clear failure for a KEK not held, no key material in
//! their output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use obr_signer::{Kek, RotationProgress, SignerConfig, SignerCore, SignerError, VaultError};

use crate::common::*;

const RP: &str = "rotate.example";
const USERS: u8 = 12;
const KEK_A: [u8; 32] = [0xA1; 32];
const KEK_B: [u8; 32] = [0xB2; 32];
/// Small batches, so the rotation interleaves with the signing.
const BATCH: u32 = 3;
/// Users passivate almost at once, so they re-activate (and re-read their
/// wrapped data key) while the rotation runs.
const QUICK_PASSIVATION: Duration = Duration::from_millis(20);

#[tokio::test]
async fn rotation_keeps_every_credential_signing_sqlite() {
    rotation_keeps_every_credential_signing(Backend::Sqlite).await;
}

#[tokio::test]
async fn rotation_keeps_every_credential_signing_postgres() {
    rotation_keeps_every_credential_signing(Backend::Postgres).await;
}

fn signer_config(db: &TempDb, kek: Kek) -> SignerConfig {
    SignerConfig {
        actor_threads: 2,
        idle_passivation: QUICK_PASSIVATION,
        ..SignerConfig::embedded(db.url(), kek)
    }
}

struct Made {
    user: String,
    id: Vec<u8>,
    public_key: Vec<u8>,
}

async fn rotation_keeps_every_credential_signing(backend: Backend) {
    let db = TempDb::of(backend).await;
    let (a, b) = (Kek::from_bytes(KEK_A), Kek::from_bytes(KEK_B));
    let both = b.clone().with_previous(a.clone());

    let core_a = SignerCore::open(signer_config(&db, a.clone()))
        .await
        .unwrap();
    let mut made = Vec::new();
    for i in 0..USERS {
        let user = format!("user-{i:02}");
        let (id, public_key) = make_credential(&core_a, &user, &Mc::new(RP, user.as_bytes())).await;
        made.push(Made {
            user,
            id,
            public_key,
        });
    }
    core_a.shutdown().await;
    drop(core_a);

    // A signer holding both KEKs signs in a loop while the rotation runs.
    let running = SignerCore::open(signer_config(&db, both.clone()))
        .await
        .unwrap();
    let rotated = AtomicBool::new(false);
    let signing = async {
        let mut counters = vec![0u32; made.len()];
        let mut rounds = 0u32;
        loop {
            for (i, credential) in made.iter().enumerate() {
                let hash = [u8::try_from(i).unwrap(); 32];
                let reply = running
                    .ctap(call(
                        &credential.user,
                        get_assertion_message(RP, &hash, std::slice::from_ref(&credential.id)),
                    ))
                    .await;
                verify_assertion(&credential.public_key, &reply, &hash);
                let counter = decode_get_assertion(&reply).auth_data.counter.unwrap();
                assert!(counter > counters[i], "counter went backwards");
                counters[i] = counter;
            }
            rounds += 1;
            if rotated.load(Ordering::Acquire) {
                break rounds;
            }
        }
    };
    let rotation = async {
        let mut batches = 0;
        let report = obr_signer::rotate_kek(&db.url(), &both, BATCH, |_| batches += 1)
            .await
            .unwrap();
        rotated.store(true, Ordering::Release);
        (report, batches)
    };
    let (rounds, (report, batches)) = tokio::join!(signing, rotation);
    assert!(rounds >= 1);
    assert!(batches >= u32::from(USERS) / BATCH, "{batches} batches");
    assert_eq!(report.kek_id, b.id());
    assert_eq!(report.totals.rewrapped, u64::from(USERS));
    assert_eq!(report.current, u64::from(USERS));
    assert!(report.remaining.is_empty(), "{:?}", report.remaining);

    // Idempotent: a second run finds nothing to do.
    let again = obr_signer::rotate_kek(&db.url(), &both, BATCH, |_| {})
        .await
        .unwrap();
    assert_eq!(again.totals, RotationProgress::default());
    assert_eq!(again.current, u64::from(USERS));
    running.shutdown().await;
    drop(running);

    // Only B: every credential still signs.
    let only_b = SignerCore::open(signer_config(&db, b.clone()))
        .await
        .unwrap();
    for credential in &made {
        let reply = only_b
            .ctap(call(
                &credential.user,
                get_assertion_message(RP, &[7; 32], std::slice::from_ref(&credential.id)),
            ))
            .await;
        verify_assertion(&credential.public_key, &reply, &[7; 32]);
    }
    only_b.shutdown().await;
    drop(only_b);

    // Only A: refused, and the error names the KEK it lacks.
    let only_a = SignerCore::open(signer_config(&db, a.clone()))
        .await
        .unwrap();
    let first = &made[0];
    let reply = only_a
        .ctap(call(
            &first.user,
            get_assertion_message(RP, &[8; 32], std::slice::from_ref(&first.id)),
        ))
        .await;
    assert_eq!(reply.status(), 0x7F, "CTAP1_ERR_OTHER: our fault");
    match only_a.delete_credential(&first.user, &first.id).await {
        Err(SignerError::Vault(error @ VaultError::UnknownKek { .. })) => {
            let VaultError::UnknownKek { found, held } = &error else {
                unreachable!()
            };
            assert_eq!(found, b.id());
            assert_eq!(held, a.id());
            assert!(error.to_string().contains(b.id()), "{error}");
        }
        other => panic!("expected UnknownKek, got {other:?}"),
    }
    only_a.shutdown().await;
}

/// A directory of KEK files, removed on drop.
struct KekDir(PathBuf);

impl KekDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("obr-kek-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for KekDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn obr_signer(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_obr-signer"));
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("OBR_SIGNER_") {
            command.env_remove(var);
        }
    }
    command.args(args).output().expect("run obr-signer")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn rotate_kek_command_counts_resumes_and_prints_no_key_material() {
    let db = TempDb::new();
    let keys = KekDir::new();
    let (old_file, new_file) = (keys.path("old.key"), keys.path("new.key"));
    std::fs::write(&old_file, hex::encode(KEK_A)).unwrap();
    // As an operator must: a KEK file others can read is refused.
    std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let old = Kek::load(&old_file).unwrap();
    let core = SignerCore::open(signer_config(&db, old.clone()))
        .await
        .unwrap();
    for user in ["u1", "u2", "u3"] {
        make_credential(&core, user, &Mc::new(RP, user.as_bytes())).await;
    }
    core.shutdown().await;
    drop(core);

    let created = obr_signer(&["new-kek", "--kek-file", arg(&new_file)]);
    assert!(created.status.success(), "{}", text(&created));
    let new = Kek::load(&new_file).unwrap();
    assert!(text(&created).contains(new.id()), "{}", text(&created));
    let refused = obr_signer(&["new-kek", "--kek-file", arg(&new_file)]);
    assert!(!refused.status.success(), "never overwrites a KEK");

    let url = db.url();
    let rotate = |previous: bool| {
        let mut args = vec![
            "rotate-kek",
            "--database-url",
            &url,
            "--kek-file",
            arg(&new_file),
            "--batch-size",
            "2",
        ];
        if previous {
            args.extend(["--previous-kek-file", arg(&old_file)]);
        }
        obr_signer(&args)
    };
    let without_old = rotate(false);
    assert!(!without_old.status.success());
    let shown = text(&without_old);
    assert!(
        shown.contains(&format!("3 data keys remain under KEK {}", old.id())),
        "{shown}"
    );
    assert!(shown.contains("not held"), "{shown}");

    let first = rotate(true);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("done: 3 re-wrapped"),
        "{}",
        text(&first)
    );
    let second = rotate(true);
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("done: 0 re-wrapped, 0 changed meanwhile (retried), 0 skipped; 3 data keys under KEK {}", new.id())),
        "{}",
        text(&second)
    );

    let new_hex = std::fs::read_to_string(&new_file).unwrap();
    for output in [&created, &without_old, &first, &second] {
        let raw = [output.stdout.as_slice(), output.stderr.as_slice()].concat();
        let shown = text(output).to_lowercase();
        assert!(!shown.contains(&hex::encode(KEK_A)), "{shown}");
        assert!(!shown.contains(new_hex.trim()), "{shown}");
        assert!(!raw.windows(KEK_A.len()).any(|w| w == KEK_A));
    }
}
