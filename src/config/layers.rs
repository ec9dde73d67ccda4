//! Where settings come from: the file (named, `METACACHE_CONFIG`, or the fallback), the
//! `METACACHE__*` variables and the command line, merged in that order, each value
//! remembering its source.

use super::*;

// ---------------------------------------------------------------------------------------
// Sources and layering

pub(super) const ENV_PREFIX: &str = "metacache__";
pub(super) const CLIENT_ENV_PREFIX: &str = "metacache__kafka__client__";
pub(super) const CLIENT_FILES_ENV_PREFIX: &str = "metacache__kafka__client_files__";
/// The `config` crate's origin for every environment value.
pub(super) const ENV_ORIGIN: &str = "the environment";
/// Starts the origin of a value that one environment variable or command-line option
/// gave, followed by its name. No file path holds a NUL byte.
pub(super) const NAMED_ORIGIN: &str = "\0";

/// The file named on the command line, else by `METACACHE_CONFIG`, else the fallback if
/// it exists. A named file must exist: silently running on defaults would hide a typo.
pub(super) fn choose_file(
    explicit: Option<&Path>,
    env: &[(OsString, OsString)],
    fallback: &Path,
    problems: &mut Vec<Problem>,
) -> Option<PathBuf> {
    let (path, named_by) = match explicit {
        Some(path) => (path.to_path_buf(), String::new()),
        None => match env
            .iter()
            .find(|(k, v)| k == CONFIG_FILE_ENV && !v.is_empty())
        {
            Some((_, v)) => (PathBuf::from(v), format!(" (named by {CONFIG_FILE_ENV})")),
            None => return fallback.is_file().then(|| fallback.to_path_buf()),
        },
    };
    let shown = path.display();
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => problems.push(Problem::new(
            "config",
            format!("{shown} is a directory, not a settings file{named_by}"),
        )),
        Ok(_) => return Some(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(Problem::new(
            "config",
            format!("file {shown} does not exist{named_by}"),
        )),
        Err(e) => problems.push(Problem::new(
            "config",
            format!("cannot read {shown}{named_by}: {e}"),
        )),
    }
    None
}

/// The `METACACHE__*` variables, split in two: `kafka.client` properties keep their dots,
/// which the `config` crate would turn into nested tables.
pub(super) struct EnvSettings {
    pub(super) general: Map<String, String>,
    pub(super) client: Map<String, Value>,
    pub(super) client_files: Map<String, Value>,
}

impl EnvSettings {
    pub(super) fn collect(
        env: &[(OsString, OsString)],
        problems: &mut Vec<Problem>,
    ) -> EnvSettings {
        let mut found = EnvSettings {
            general: Map::new(),
            client: Map::new(),
            client_files: Map::new(),
        };
        for (name, value) in env {
            // Like the config crate: names are matched in any case, non-Unicode ones skipped.
            let Some(name) = name.to_str() else { continue };
            let lower = name.to_ascii_lowercase();
            let Some(path) = lower.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some(value) = value.to_str() else {
                problems.push(Problem::new(
                    path.replace("__", "."),
                    format!("environment variable {name} is not valid UTF-8"),
                ));
                continue;
            };
            let client = match lower.strip_prefix(CLIENT_ENV_PREFIX) {
                Some(property) => Some(("kafka.client", property, &mut found.client)),
                None => lower
                    .strip_prefix(CLIENT_FILES_ENV_PREFIX)
                    .map(|p| ("kafka.client_files", p, &mut found.client_files)),
            };
            match client {
                // librdkafka property names use dots, never underscores.
                Some((table, property, into)) => {
                    let property = property.replace("__", ".").replace('_', ".");
                    if property.is_empty() {
                        problems.push(Problem::new(
                            table,
                            format!("environment variable {name} names no property"),
                        ));
                    } else {
                        let origin = format!("{NAMED_ORIGIN}{name}");
                        into.insert(property, Value::new(Some(&origin), value.to_string()));
                    }
                }
                None => {
                    found.general.insert(name.to_string(), value.to_string());
                }
            }
        }
        found
    }
}

/// A source whose values are already parsed.
#[derive(Debug, Clone)]
pub(super) struct Parsed(Map<String, Value>);

impl Source for Parsed {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ::config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Defaults, file, environment, command line: later sources win key by key.
pub(super) fn merge_sources(
    file: Option<&Path>,
    env: EnvSettings,
    overrides: &[Override],
) -> Result<Map<String, Value>, ConfigError> {
    let defaults = Config::try_from(&Settings::default())
        .map_err(|e| single("config", format!("built-in defaults: {e}")))?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = file {
        builder = builder.add_source(Parsed(read_toml(path)?));
    }
    builder = builder.add_source(
        // try_parsing stays off: it would turn a password "0123" into "123". The
        // deserializer parses numbers and booleans from strings anyway.
        Environment::with_prefix("METACACHE")
            .separator("__")
            .source(Some(env.general)),
    );
    // Only when there is something to add: merging even an empty table replaces a
    // `kafka.client` that is not a table, hiding that mistake.
    for (table, entries) in [("client", env.client), ("client_files", env.client_files)] {
        if !entries.is_empty() {
            let mut client = Map::new();
            client.insert(table.to_string(), Value::from(entries));
            let mut kafka = Map::new();
            kafka.insert("kafka".to_string(), Value::from(client));
            builder = builder.add_source(Parsed(kafka));
        }
    }
    if !overrides.is_empty() {
        let mut given = Map::new();
        for option in overrides {
            let origin = format!("{NAMED_ORIGIN}{}", option.option);
            // A dotted key is a path: `kafka.brokers` sets `brokers` in `kafka`.
            given.insert(
                option.field.to_string(),
                Value::new(Some(&origin), option.value.clone()),
            );
        }
        builder = builder.add_source(Parsed(given));
    }
    builder
        .build()
        .and_then(|config| config.collect())
        .map_err(|e| single("config", e.to_string()))
}

/// Reads the file ourselves: `config::File` would quietly try `<name>.toml` etc. when
/// the exact path is missing, and reads non-UTF-8 lossily.
pub(super) fn read_toml(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| single("config", format!("cannot read {shown}: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let uri = shown.to_string();
    let unparsable = |message: String| {
        // The error quotes the offending line, which may hold a secret: keep the position
        // and the message only.
        let lines: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
        let summary = match (lines.first(), lines.last()) {
            (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
            _ => message.clone(),
        };
        single("config", format!("cannot parse {shown}: {summary}"))
    };
    // The toml crate's errors carry a position; the config crate's sometimes do not
    // (integers beyond i64).
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(unparsable(e.to_string()));
    }
    <FileFormat as Format>::parse(&FileFormat::Toml, Some(&uri), text)
        .map_err(|e| unparsable(e.to_string()))
}

pub(super) fn single(field: &str, reason: String) -> ConfigError {
    ConfigError {
        problems: vec![Problem::new(field, reason)],
    }
}
