//! Certificates for the TLS tests, made with openssl (scripts/setup.sh installs it): a CA,
//! and server or client certificates it signs.

use std::path::Path;
use std::process::{Command, Stdio};

pub fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl {args:?} (scripts/setup.sh installs openssl)");
}

/// A CA named `name` in `dir`: `{name}.pem`, `{name}.key`.
pub fn ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-days", "1", "-subj", &subj,
        ],
    );
}

/// A certificate `{name}.pem`/`{name}.key` for `cn`, signed by CA `by`.
pub fn cert(dir: &Path, name: &str, cn: &str, by: &str, ext: &str) {
    cert_for_days(dir, name, cn, by, ext, "1")
}

/// [`cert`] valid for `days` (`"0"`: it expires the second it is made).
pub fn cert_for_days(dir: &Path, name: &str, cn: &str, by: &str, ext: &str, days: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ],
    );
    let extfile = format!("{name}.cnf");
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let (ca_pem, ca_key) = (format!("{by}.pem"), format!("{by}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            days,
            "-extfile",
            &extfile,
        ],
    );
}
