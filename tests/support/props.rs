//! What the property tests share: how many cases a property runs.

use proptest::prelude::ProptestConfig;

/// Bounded for CI: 2,000 cases per property unless `PROPTEST_CASES` says otherwise.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}
