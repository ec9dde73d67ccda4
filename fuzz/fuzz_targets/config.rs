//! The configuration loader on arbitrary file contents: every input is either settings
//! or a list of problems, never a panic (and never a secret in the problems' text, which
//! the loader's own tests check for known fields).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile_dir() else {
        return;
    };
    let path = dir.join("metacache.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = metacache::config::Settings::load(Some(&path));
});

/// One directory per process (files are rewritten for each input).
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("metacache-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
