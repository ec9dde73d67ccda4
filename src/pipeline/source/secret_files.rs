//! Rotated Kafka credentials reaching running clients.
//!
//! librdkafka reads its properties once, when a client is made. For SASL PLAIN and SCRAM
//! it also takes new credentials at run time (`rd_kafka_sasl_set_credentials`, librdkafka
//! 2.0+), which it uses at the next authentication, that is at every reconnect. So a
//! rotated `sasl.username` or `sasl.password` file (a Kubernetes Secret updated in place)
//! is handed to the running consumer and dead-letter producer; any other property read
//! from a file takes effect at the next start, and its change is logged once.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};

use crate::config::KafkaSettings;

/// How often the files are read again.
pub const POLL: Duration = Duration::from_secs(10);

/// SASL user name and password, as librdkafka wants them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Watches `kafka.client_files`.
pub struct SecretFiles {
    files: BTreeMap<String, String>,
    /// The user name when it is not read from a file.
    username: Option<String>,
    seen: BTreeMap<String, String>,
    next_check: Instant,
}

impl SecretFiles {
    /// `None` when no property is read from a file.
    pub fn new(kafka: &KafkaSettings) -> Option<SecretFiles> {
        if kafka.client_files.is_empty() {
            return None;
        }
        let mut files = SecretFiles {
            files: kafka.client_files.clone(),
            username: kafka.client.get("sasl.username").cloned(),
            seen: BTreeMap::new(),
            next_check: Instant::now() + POLL,
        };
        files.seen = files.read();
        Some(files)
    }

    /// What each file holds now (unreadable ones left out: the last good value stays).
    fn read(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .filter_map(|(property, path)| {
                metacache_client::settings::read_secret_file(path)
                    .ok()
                    .map(|value| (property.clone(), value))
            })
            .collect()
    }

    /// Called from a poll loop: at most every [`POLL`], reads the files and returns the
    /// SASL credentials to apply when they changed. Other properties that changed are
    /// logged (they need a restart).
    pub fn poll(&mut self, now: Instant) -> Option<Credentials> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + POLL;
        let current = self.read();
        let changed: Vec<String> = current
            .iter()
            .filter(|(property, value)| self.seen.get(*property) != Some(*value))
            .map(|(property, _)| property.clone())
            .collect();
        if changed.is_empty() {
            return None;
        }
        for (property, value) in &current {
            self.seen.insert(property.clone(), value.clone());
        }
        let mut sasl = false;
        for property in &changed {
            if matches!(property.as_str(), "sasl.username" | "sasl.password") {
                sasl = true;
            } else {
                tracing::warn!(property = %property,
                    "kafka.client_files: the file changed; librdkafka reads this property only when a client is made, so it takes effect at the next start");
            }
        }
        if !sasl {
            return None;
        }
        let username = self
            .seen
            .get("sasl.username")
            .or(self.username.as_ref())?
            .clone();
        let password = self.seen.get("sasl.password")?.clone();
        Some(Credentials { username, password })
    }
}

/// Hands new SASL credentials to a running librdkafka client; it uses them at its next
/// authentication.
pub fn apply<C: ClientContext>(
    client: &Client<C>,
    credentials: &Credentials,
) -> Result<(), String> {
    let username = CString::new(credentials.username.as_str())
        .map_err(|_| "sasl.username contains a NUL byte".to_owned())?;
    let password = CString::new(credentials.password.as_str())
        .map_err(|_| "sasl.password contains a NUL byte".to_owned())?;
    // SAFETY: the client pointer is valid for as long as `client` is borrowed, and
    // librdkafka copies both strings before returning (they are freed after the call).
    let error = unsafe {
        rdkafka::bindings::rd_kafka_sasl_set_credentials(
            client.native_ptr(),
            username.as_ptr(),
            password.as_ptr(),
        )
    };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error is owned by the caller: read its message, then free it.
    let message = unsafe {
        let text = CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        rdkafka::bindings::rd_kafka_error_destroy(error);
        text
    };
    Err(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, with_user_file: bool) -> KafkaSettings {
        let mut kafka = KafkaSettings::default();
        std::fs::write(dir.join("password"), "first\n").unwrap();
        kafka.client_files.insert(
            "sasl.password".into(),
            dir.join("password").display().to_string(),
        );
        if with_user_file {
            std::fs::write(dir.join("username"), "svc-a").unwrap();
            kafka.client_files.insert(
                "sasl.username".into(),
                dir.join("username").display().to_string(),
            );
        } else {
            kafka.client.insert("sasl.username".into(), "svc".into());
        }
        std::fs::write(dir.join("key-password"), "k1").unwrap();
        kafka.client_files.insert(
            "ssl.key.password".into(),
            dir.join("key-password").display().to_string(),
        );
        kafka
    }

    #[test]
    fn a_rotated_password_is_returned_once_at_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SecretFiles::new(&settings(dir.path(), false)).unwrap();
        let start = Instant::now();
        assert_eq!(files.poll(start + POLL), None, "nothing changed");
        std::fs::write(dir.path().join("password"), "second").unwrap();
        assert_eq!(files.poll(start + POLL), None, "checked less than POLL ago");
        let rotated = files.poll(start + POLL * 2).expect("the new password");
        assert_eq!(rotated.username, "svc");
        assert_eq!(rotated.password, "second");
        assert_eq!(files.poll(start + POLL * 3), None, "applied once");
        assert!(!format!("{rotated:?}").contains("second"));
    }

    #[test]
    fn a_user_file_counts_and_other_properties_wait_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SecretFiles::new(&settings(dir.path(), true)).unwrap();
        let start = Instant::now();
        std::fs::write(dir.path().join("key-password"), "k2").unwrap();
        assert_eq!(files.poll(start + POLL), None, "not a SASL credential");
        std::fs::write(dir.path().join("username"), "svc-b").unwrap();
        let rotated = files.poll(start + POLL * 2).expect("the new user");
        assert_eq!(
            (rotated.username.as_str(), rotated.password.as_str()),
            ("svc-b", "first")
        );
    }

    #[test]
    fn an_unreadable_file_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SecretFiles::new(&settings(dir.path(), false)).unwrap();
        std::fs::remove_file(dir.path().join("password")).unwrap();
        assert_eq!(files.poll(Instant::now() + POLL), None);
    }
}
