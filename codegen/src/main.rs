//! warren-codegen: turns the AMQP 0-9-1 spec XML (plus warren's RabbitMQ
//! overlay) into `src/protocol/generated.rs`.
//!
//! `cargo run -p warren-codegen` rewrites the file; `-- --check` only
//! compares, and exits non-zero with a summary when the checked-in file is
//! stale (CI runs it).

mod emit;
mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const SPEC: &str = "spec/amqp0-9-1.stripped.extended.xml";
const OVERLAY: &str = "spec/rabbitmq-overlay.xml";
const OUTPUT: &str = "src/protocol/generated.rs";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen/ lives inside the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Formats generated source with rustfmt, so the checked-in file is what
/// `cargo fmt` would leave.
fn rustfmt(source: &str) -> Result<String, String> {
    let mut child = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2021", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running rustfmt: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(source.as_bytes())
        .map_err(|e| format!("writing to rustfmt: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for rustfmt: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rustfmt rejected the generated code:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("rustfmt output: {e}"))
}

/// A short account of how two versions of the file differ.
fn diff_summary(old: &str, new: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let first = old_lines
        .iter()
        .zip(&new_lines)
        .position(|(a, b)| a != b)
        .unwrap_or(old_lines.len().min(new_lines.len()));
    let changed = old_lines
        .iter()
        .zip(&new_lines)
        .filter(|(a, b)| a != b)
        .count();
    let mut summary = format!(
        "{} lines checked in, {} generated; {} differ in place; first difference at line {}",
        old_lines.len(),
        new_lines.len(),
        changed,
        first + 1
    );
    if let Some(line) = old_lines.get(first) {
        summary.push_str(&format!("\n  checked in: {line}"));
    }
    if let Some(line) = new_lines.get(first) {
        summary.push_str(&format!("\n  generated:  {line}"));
    }
    summary
}

fn run(check: bool) -> Result<bool, String> {
    let root = workspace_root();
    let spec = spec::load(&read(&root.join(SPEC))?, &read(&root.join(OVERLAY))?)?;
    let generated = rustfmt(&emit::generate(&spec))?;
    let output = root.join(OUTPUT);
    let current = std::fs::read_to_string(&output).unwrap_or_default();
    if check {
        if current == generated {
            println!("{OUTPUT} is up to date");
            return Ok(true);
        }
        eprintln!(
            "{OUTPUT} is stale: run `cargo run -p warren-codegen`\n{}",
            diff_summary(&current, &generated)
        );
        return Ok(false);
    }
    if current != generated {
        std::fs::write(&output, &generated)
            .map_err(|e| format!("writing {}: {e}", output.display()))?;
        println!("wrote {OUTPUT}");
    } else {
        println!("{OUTPUT} unchanged");
    }
    Ok(true)
}

fn main() -> ExitCode {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: warren-codegen [--check]\n\nRegenerates {OUTPUT} from {SPEC} and {OVERLAY}.\n--check  compare only; exit 1 if the file is stale");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("warren-codegen: unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("warren-codegen: {e}");
            ExitCode::from(2)
        }
    }
}
