//! Loading a configuration from its three sources (the TOML file,
//! `TETHER_<SECTION>_<KEY>` variables, flags) while remembering which one
//! set each key, so that every error can say where the bad value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// Sections that `TETHER_<SECTION>_<KEY>` environment variables may address.
const SECTIONS: &[&str] = &["server", "tls", "limits", "session", "token", "stamp", "journal", "log", "cluster"];

/// Where one key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
    },
    /// A `TETHER_<SECTION>_<KEY>` environment variable.
    Env(String),
    /// A command-line flag, e.g. `--upstream`.
    Flag(&'static str),
    /// Nothing set it: tether's default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{} line {line}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// Which source set each key: the file (by its text, searched only when an
/// error needs a line) and the variables and flags that overrode it.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: Option<(PathBuf, String)>,
    overrides: BTreeMap<String, Origin>,
}

impl Origins {
    /// Records that `flag` set `key` (e.g. `server.upstream`).
    pub fn flag(&mut self, key: &str, flag: &'static str) {
        self.overrides.insert(key.to_owned(), Origin::Flag(flag));
    }

    /// Where the value at `key` (a dotted path, possibly into a table or an
    /// array) came from: the override that set it or a table holding it,
    /// else the file's line, else the default.
    pub fn of(&self, key: &str) -> Origin {
        let segments: Vec<&str> = key.split('.').collect();
        for n in (1..=segments.len()).rev() {
            if let Some(o) = self.overrides.get(&segments[..n].join(".")) {
                return o.clone();
            }
        }
        let Some((path, text)) = &self.file else { return Origin::Default };
        match line_of(text, &segments) {
            Some(line) => Origin::File { path: path.clone(), line },
            None => Origin::Default,
        }
    }

    /// `e` with the origin of the key it names, if it names one.
    pub fn locate(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, message, origin: None } if !key.is_empty() => {
                let origin = Some(self.of(&key));
                ConfigError::Invalid { key, message, origin }
            }
            other => other,
        }
    }
}

/// The 1-based line of the deepest table or key of `segments` that the
/// file's text has (array indices, `[0]`, stop the walk).
fn line_of(text: &str, segments: &[&str]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for seg in segments {
        let Some((k, item)) = table.get_key_value(seg) else { break };
        span = k.span().or(span);
        match item.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
    }
    let start = span?.start;
    Some(text[..start].matches('\n').count() + 1)
}

impl Config {
    /// Loads `path` (if given), then applies `TETHER_<SECTION>_<KEY>` variables
    /// from `env`, then checks the result. Errors name the key and where its
    /// value came from.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let (config, origins) = Config::parse(path, env)?;
        config.validate().map_err(|e| origins.locate(e))?;
        Ok(config)
    }

    /// [`Config::load`] without the final [`Config::validate`], for callers
    /// that override more keys first: the configuration and where each key
    /// came from.
    pub fn parse(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Origins), ConfigError> {
        let mut origins = Origins::default();
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table = text.parse::<toml::Table>().map_err(|e| syntax(path, &text, &e))?;
                origins.file = Some((path.to_owned(), text));
                table
            }
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("TETHER_") else { continue };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else { continue };
            if !SECTIONS.contains(&section) || is_service_link(key) {
                continue;
            }
            let entry = table.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(origins.locate(ConfigError::invalid(section, "must be a table ([section])")));
            };
            section_table.insert(key.to_owned(), env_value(&raw));
            origins.overrides.insert(format!("{section}.{key}"), Origin::Env(name));
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().replace('`', "\"");
            // serde names the key again: "unknown field `lingerr`, expected ...".
            let message = match message.split_once(", expected") {
                Some((head, rest)) if head.starts_with("unknown field") => format!("unknown key, expected{rest}"),
                _ => message,
            };
            origins.locate(ConfigError::invalid(key, message))
        })?;
        Ok((config, origins))
    }
}

/// A TOML syntax error as one line: the file, the line and column, what
/// is wrong.
fn syntax(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" line {line}, column {col}")
        }
        None => String::new(),
    };
    ConfigError::Syntax(format!("{}{at}: {}", path.display(), e.message().trim_end().replace('\n', ", ")))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8080_TCP`
/// and friends for every Service in the namespace; a Service named e.g.
/// `tether-server-x` must not read as an unknown `[server]` key. No tether
/// key starts with `port` or `service_`.
fn is_service_link(key: &str) -> bool {
    key == "port"
        || key.starts_with("port_")
        || key.starts_with("service_")
        || key.contains("_service_")
        || key.ends_with("_port")
        || key.contains("_port_")
}

/// Environment values are TOML when they parse as a TOML value (numbers,
/// booleans, arrays), and plain strings otherwise (`120s`, `0.0.0.0:8080`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
