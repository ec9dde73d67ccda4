//! From the merged tree to typed settings: every unknown key (with a suggestion) and
//! every value of the wrong type, each named with its source.

use super::*;

// ---------------------------------------------------------------------------------------
// From the merged tree to typed settings, reporting every unknown key and bad type

/// Optional settings (no default to learn the type from) that hold integers.
pub(super) const OPTIONAL_INTEGERS: &[&str] = &["redis.db"];

/// What reading the merged tree found: problems, and where each setting given came from.
#[derive(Default)]
pub(super) struct Found {
    pub(super) problems: Vec<Problem>,
    /// By dotted name: `in FILE` or `from VARIABLE`, for settings not left at their default.
    pub(super) sources: BTreeMap<String, String>,
}

impl Found {
    pub(super) fn problem(&mut self, field: &str, reason: String) {
        self.problems.push(Problem::new(field, reason));
    }

    /// Remembers where `field` came from, for the checks that run later.
    pub(super) fn note(&mut self, field: &str, value: &Value) {
        if let Some(source) = source_of(field, value) {
            self.sources.insert(field.to_string(), source);
        }
    }
}

pub(super) fn from_tree(mut tree: Map<String, Value>, found: &mut Found) -> Settings {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let sections = json_keys(&defaults);
    for (name, value) in sorted(&tree) {
        if sections.contains(name) {
            continue;
        }
        // A setting written above every section header, e.g. `brokers = ...`.
        let home = sections
            .iter()
            .find(|section| defaults[section.as_str()].get(name.as_str()).is_some());
        let reason = match home {
            Some(section) => format!("unknown section (did you mean `{section}.{name}`?)"),
            None => unknown(name, &sections, "section"),
        };
        found.problem(name, reason + &source_hint(name, value));
    }
    if let Some(kafka) = tree.get_mut("kafka") {
        flatten_client(kafka, found);
    }
    let mut take = |name: &str| tree.remove(name);
    Settings {
        kafka: section("kafka", take("kafka"), found),
        redis: section("redis", take("redis"), found),
        devices: section("devices", take("devices"), found),
        metrics: section("metrics", take("metrics"), found),
        writer: section("writer", take("writer"), found),
        limits: section("limits", take("limits"), found),
        shutdown: section("shutdown", take("shutdown"), found),
        janitor: section("janitor", take("janitor"), found),
        http: section("http", take("http"), found),
        api: section("api", take("api"), found),
        log: section("log", take("log"), found),
    }
}

/// Deserializes one section, reporting each unknown key and each bad value by name: the
/// config crate's own deserialization stops at the first error.
pub(super) fn section<T>(name: &str, value: Option<Value>, found: &mut Found) -> T
where
    T: Default + Serialize + DeserializeOwned,
{
    let Some(value) = value else {
        return T::default();
    };
    found.note(name, &value);
    let hint = source_hint(name, &value);
    let table = match value.kind {
        ValueKind::Table(table) => table,
        other => {
            let shown = show(&Value::new(None, other), false);
            found.problem(
                name,
                format!("expected a table of settings, got {shown}{hint}"),
            );
            return T::default();
        }
    };
    let defaults = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(defaults)) => defaults,
        _ => serde_json::Map::new(),
    };
    let known: BTreeSet<String> = defaults.keys().cloned().collect();
    let mut good = Map::new();
    for (key, value) in sorted(&table) {
        let field = format!("{name}.{key}");
        found.note(&field, value);
        match defaults.get(key) {
            None => found.problem(
                &field,
                unknown(key, &known, "setting") + &source_hint(&field, value),
            ),
            Some(default) => match check_kind(&field, default, value) {
                Ok(()) => {
                    good.insert(key.clone(), value.clone());
                }
                Err(reason) => found.problem(&field, reason + &source_hint(&field, value)),
            },
        }
    }
    if let Ok(parsed) = T::deserialize(Value::from(good.clone())) {
        return parsed;
    }
    // Something the kind check let through (a negative count, an overflow): find it.
    for (key, value) in sorted(&good.clone()) {
        let field = format!("{name}.{key}");
        let mut alone = Map::new();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = T::deserialize(Value::from(alone)) {
            found.problem(
                &field,
                serde_reason(&field, value, &e) + &source_hint(&field, value),
            );
            good.remove(key);
        }
    }
    T::deserialize(Value::from(good)).unwrap_or_else(|e| {
        found.problem(name, e.to_string());
        T::default()
    })
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Integer,
    Bool,
    Text,
    Table,
    /// A list of strings; from the environment, one comma-separated string.
    List,
}

/// The config crate converts too freely (`10.5` to 11, `true` to 1, `"yes"` to true, 42
/// to "42"): accept what a person would mean, and strings where environment values are.
///
/// Booleans have one rule: a TOML `true` or `false`, or from the environment the string
/// `true` or `false` (in any case). Nothing else, not `"yes"`, `"off"`, 1 or `"0"`.
pub(super) fn check_kind(
    field: &str,
    default: &serde_json::Value,
    value: &Value,
) -> Result<(), String> {
    let kind = match default {
        serde_json::Value::Number(_) => Kind::Integer,
        serde_json::Value::Bool(_) => Kind::Bool,
        serde_json::Value::Object(_) => Kind::Table,
        serde_json::Value::Array(_) => Kind::List,
        serde_json::Value::Null if OPTIONAL_INTEGERS.contains(&field) => Kind::Integer,
        _ => Kind::Text,
    };
    let ok = match (kind, &value.kind) {
        (_, ValueKind::Nil) => true,
        (Kind::Integer, ValueKind::I64(_) | ValueKind::I128(_)) => true,
        (Kind::Integer, ValueKind::U64(_) | ValueKind::U128(_)) => true,
        (Kind::Integer, ValueKind::String(s)) => s.parse::<i128>().is_ok(),
        (Kind::Bool, ValueKind::Boolean(_)) => true,
        (Kind::Bool, ValueKind::String(s)) => {
            let word = s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false");
            if word && value.origin() != Some(ENV_ORIGIN) {
                return Err(format!(
                    "expected a boolean (true or false), got the string {s:?} (write it \
                     without quotes)"
                ));
            }
            word
        }
        (Kind::Text, ValueKind::String(_)) => true,
        (Kind::Table, ValueKind::Table(_)) => true,
        (Kind::List, ValueKind::String(_)) => true,
        (Kind::List, ValueKind::Array(items)) => {
            items.iter().all(|i| matches!(i.kind, ValueKind::String(_)))
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Integer => "an integer",
        Kind::Bool => "a boolean (true or false)",
        Kind::Text => "a string",
        Kind::Table => "a table",
        Kind::List => "a list of strings",
    };
    Err(format!(
        "expected {expected}, got {}",
        show(value, is_secret_field(field))
    ))
}

pub(super) fn serde_reason(field: &str, value: &Value, error: &::config::ConfigError) -> String {
    let expected = match error {
        // Negative or beyond 64 bits; the crate's own wording ("an unsigned 64 bit or less
        // integer", or just "an integer") does not say which.
        ::config::ConfigError::Type { expected, .. } if expected.contains("integer") => {
            if OPTIONAL_INTEGERS.contains(&field) {
                "a 64-bit integer".to_string()
            } else {
                "a non-negative 64-bit integer".to_string()
            }
        }
        ::config::ConfigError::Type { expected, .. } => expected.to_string(),
        _ if is_secret_field(field) => return "has an invalid value".to_string(),
        other => return other.to_string(),
    };
    format!(
        "expected {expected}, got {}",
        show(value, is_secret_field(field))
    )
}

/// `kafka.client` and `kafka.client_files` are keyed by librdkafka properties, whose
/// names have dots: a TOML file writing `sasl.mechanism = "PLAIN"` unquoted means the same
/// as `"sasl.mechanism" = "PLAIN"`.
pub(super) fn flatten_client(kafka: &mut Value, found: &mut Found) {
    let ValueKind::Table(kafka) = &mut kafka.kind else {
        return;
    };
    for table in ["client", "client_files"] {
        let Some(client) = kafka.get_mut(table) else {
            continue;
        };
        let ValueKind::Table(entries) = &client.kind else {
            continue;
        };
        let mut flat = Map::new();
        flatten_into(table, "", entries, &mut flat, found);
        client.kind = ValueKind::Table(flat);
    }
}

pub(super) fn flatten_into(
    table: &str,
    prefix: &str,
    entries: &Map<String, Value>,
    flat: &mut Map<String, Value>,
    found: &mut Found,
) {
    let name = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    // Nested tables first, so a quoted name (and the environment, which always gives
    // one) wins over the same name spelled as nested keys.
    for (key, value) in sorted(entries) {
        if let ValueKind::Table(inner) = &value.kind {
            let property = name(key);
            if is_misplaced_table(&property, inner) {
                let field = format!("kafka.{table}.{property}");
                found.problem(
                    &field,
                    format!("expected a string, got {}", show(value, false))
                        + &source_hint(&field, value),
                );
            } else {
                flatten_into(table, &property, inner, flat, found);
            }
        }
    }
    for (key, value) in sorted(entries) {
        let property = name(key);
        let field = format!("kafka.{table}.{property}");
        match &value.kind {
            ValueKind::Table(_) => {}
            ValueKind::Array(_) | ValueKind::Nil => found.problem(
                &field,
                format!(
                    "expected a string, got {} (librdkafka lists are comma-separated strings)",
                    show(value, false)
                ) + &source_hint(&field, value),
            ),
            _ => {
                found.note(&field, value);
                flat.insert(property, value.clone());
            }
        }
    }
}

/// A table under a librdkafka property's own name (`"ssl.key.password" = { ... }`) is a
/// value in the wrong shape, unless it spells longer property names as nested keys
/// (`group.protocol` and `group.protocol.type` both exist), correctly or nearly so.
pub(super) fn is_misplaced_table(property: &str, inner: &Map<String, Value>) -> bool {
    fn leaves(prefix: &str, table: &Map<String, Value>, out: &mut Vec<String>) {
        for (key, value) in table {
            let name = format!("{prefix}.{key}");
            match &value.kind {
                ValueKind::Table(inner) => leaves(&name, inner, out),
                _ => out.push(name),
            }
        }
    }
    if librdkafka::property_type(property).is_none() {
        return false;
    }
    let mut names = Vec::new();
    leaves(property, inner, &mut names);
    !names.iter().any(|name| {
        librdkafka::property_type(name).is_some() || librdkafka::nearest(name).is_some()
    })
}

/// The field names of a settings struct, as serde sees them.
pub(super) fn json_keys<T: Serialize>(value: &T) -> BTreeSet<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

pub(super) fn sorted(map: &Map<String, Value>) -> BTreeMap<&String, &Value> {
    map.iter().collect()
}

/// "unknown setting", with the nearest known name when it looks like a typo.
pub(super) fn unknown(key: &str, known: &BTreeSet<String>, what: &str) -> String {
    match nearest(key, known.iter().map(String::as_str)) {
        Some(name) => format!("unknown {what} (did you mean `{name}`?)"),
        None => format!("unknown {what}"),
    }
}

/// The known name `key` most likely misspells: at most two edits, and few for its length.
pub(super) fn nearest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.to_lowercase();
    let (distance, name) = known
        .into_iter()
        .map(|k| (edit_distance(&key, k), k))
        .min()?;
    (distance <= 2 && distance * 3 <= key.len()).then_some(name)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Where a value came from, so a typo in a Helm chart's env list is found quickly: ` (in
/// FILE)`, ` (from VARIABLE)`, or nothing for a default.
pub(super) fn source_hint(field: &str, value: &Value) -> String {
    match source_of(field, value) {
        Some(source) => format!(" ({source})"),
        None => String::new(),
    }
}

/// `in FILE` or `from VARIABLE`; `None` for a built-in default.
pub(super) fn source_of(field: &str, value: &Value) -> Option<String> {
    let origin = origin_of(value)?;
    if let Some(name) = origin.strip_prefix(NAMED_ORIGIN) {
        return Some(format!("from {name}"));
    }
    if origin != ENV_ORIGIN {
        return Some(format!("in {origin}"));
    }
    let name = format!("METACACHE__{}", field.to_uppercase().replace('.', "__"));
    Some(if matches!(value.kind, ValueKind::Table(_)) {
        format!("from {name}__* variables")
    } else {
        format!("from {name}")
    })
}

pub(super) fn origin_of(value: &Value) -> Option<&str> {
    if let Some(origin) = value.origin() {
        return Some(origin);
    }
    match &value.kind {
        ValueKind::Table(table) => table.values().find_map(origin_of),
        _ => None,
    }
}

/// A value for a message; a secret's is never shown.
pub(super) fn show(value: &Value, secret: bool) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "an array".into(),
        _ if secret => "a value (not shown: secret)".into(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(n) => n.to_string(),
    }
}
