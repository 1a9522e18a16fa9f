//! The README's first command, as a test: `obr-demo` brings the system up
//! with embedded defaults and runs the whole story, printing every step.

use std::process::Command;

use obr_tests::scratch::Scratch;

#[test]
fn the_demo_runs_the_whole_story() -> anyhow::Result<()> {
    let scratch = Scratch::new("demo")?;
    let output = Command::new(env!("CARGO_BIN_EXE_obr-demo"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--exit-after-story",
            "--data-dir",
        ])
        .arg(scratch.join("data"))
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success());
    for n in 1..=10 {
        assert!(stdout.contains(&format!("[{n}] ")), "step {n} missing");
    }
    assert!(stdout.contains("OBR: acting for bob@demo.obr"));
    assert!(stdout.contains("webauthn-rs accepted the assertion"));
    assert!(stdout.contains("hash chain intact: true"));
    Ok(())
}
