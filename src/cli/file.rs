//! The config file: a YAML mapping of long flag names to values, read at start-up for
//! every setting that neither a flag nor its `TRAFFICMIRROR_*` variable gives.
//!
//! ```yaml
//! listen: ":9000"
//! targets-address: localhost:1234
//! passwordFile: /etc/trafficmirror/users.txt   # aliases work too
//! mirror: [http://a:8080, http://b:8080]      # or one string, comma-separated
//! retry-after: 30s
//! preserve-host: true
//! verbose: 1                                   # counts like -v
//! ```
//!
//! This module owns finding, reading and checking the file and turning its entries into
//! command-line words; [`super::Cli::try_parse_with_config`] decides when they apply.
//! Values are checked with the same clap parsers as flags; what only [`crate::config`]
//! checks (a bad `listen` address, say) is reported there, and the binary adds the
//! file and key to that message using [`AppliedFile::key_for_flag`].

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};
use yaml_rust2::{Yaml, YamlLoader};

/// The file name looked for in the working directory and in `~/.trafficmirror/`.
pub const FILE_NAME: &str = "trafficmirror.yaml";

/// A config file larger than this is refused rather than read (`--config /dev/zero`).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// Arguments that have a long name but cannot be set from the file.
const NOT_KEYS: [&str; 3] = ["help", "version", "config"];

/// A config file that cannot be used. Display is the whole one-line message, naming
/// the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is larger than {MAX_FILE_SIZE} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error("config file {} is not valid YAML: {message}", .path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("config file {}: {message}", .path.display())]
    Shape { path: PathBuf, message: String },
    #[error(
        "config file {}: unknown key {key:?} (keys are long flag names, e.g. listen, mirror)",
        .path.display()
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {}: key {key:?}: {message}", .path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A value as written in the file: scalars of any YAML type are kept as their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Scalar(String),
    List(Vec<String>),
}

/// One `key: value` line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key as written (its spelling is kept for messages).
    pub key: String,
    pub value: Value,
}

/// A parsed config file, keys not yet checked against the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub path: PathBuf,
    /// In file order.
    pub entries: Vec<Entry>,
}

/// What a config file contributed, for the start-up log and for naming the file in
/// errors found later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedFile {
    pub path: PathBuf,
    /// `(key as written, long flag name)` for every entry that was used.
    pub applied: Vec<(String, String)>,
    /// Keys that a flag or an environment variable overrode.
    pub overridden: Vec<String>,
}

impl AppliedFile {
    /// The file's key that set the flag with this long name, if the file set it.
    pub fn key_for_flag(&self, long: &str) -> Option<&str> {
        self.applied
            .iter()
            .find(|(_, l)| l == long)
            .map(|(k, _)| k.as_str())
    }
}

/// The default places, in order: `./trafficmirror.yaml`, then
/// `HOME/.trafficmirror/trafficmirror.yaml` when a home directory is known.
pub fn default_paths(home: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = vec![Path::new(".").join(FILE_NAME)];
    if let Some(home) = home.filter(|h| !h.as_os_str().is_empty()) {
        paths.push(home.join(".trafficmirror").join(FILE_NAME));
    }
    paths
}

impl FileSettings {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is too large, is not UTF-8 or not a YAML mapping of
    /// scalars and lists.
    pub fn read(path: &Path) -> Result<Self, ConfigFileError> {
        Self::parse(path, &read_text(path)?)
    }

    /// Reads the first of `paths` that exists; `None` when none does.
    ///
    /// # Errors
    /// As [`FileSettings::read`] for the first file that exists: a broken file is not
    /// skipped in favour of the next one.
    pub fn find(paths: &[PathBuf]) -> Result<Option<Self>, ConfigFileError> {
        for path in paths {
            match read_text(path) {
                Ok(text) => return Self::parse(path, &text).map(Some),
                Err(ConfigFileError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// Parses YAML text; `path` is only used in messages. An empty file (or one holding
    /// only comments) has no entries.
    ///
    /// # Errors
    /// Not YAML, more than one document, not a mapping, a key that is not a string, a
    /// key without a value, or a value that is neither a scalar nor a list of scalars.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        let shape = |message: String| ConfigFileError::Shape {
            path: path.to_owned(),
            message,
        };
        let docs = YamlLoader::load_from_str(text).map_err(|err| ConfigFileError::Yaml {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        let root = match docs.as_slice() {
            [] => return Ok(Self::empty(path)),
            [one] => one,
            more => {
                return Err(shape(format!(
                    "holds {} YAML documents, expected one",
                    more.len()
                )));
            }
        };
        let map = match root {
            Yaml::Hash(map) => map,
            // An empty document (`---` alone) or an explicit null.
            Yaml::Null | Yaml::BadValue => return Ok(Self::empty(path)),
            _ => {
                return Err(shape(
                    "expected `flag-name: value` lines at the top level".to_owned(),
                ));
            }
        };
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Some(key) = scalar(key) else {
                return Err(shape("every key must be a flag name".to_owned()));
            };
            let bad = |message: &str| ConfigFileError::BadValue {
                path: path.to_owned(),
                key: key.clone(),
                message: message.to_owned(),
            };
            let value = match value {
                Yaml::Null => return Err(bad("has no value")),
                Yaml::Array(items) => Value::List(
                    items
                        .iter()
                        .map(scalar)
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("a list may only hold plain values"))?,
                ),
                other => {
                    Value::Scalar(scalar(other).ok_or_else(|| bad("expected a value or a list"))?)
                }
            };
            entries.push(Entry { key, value });
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    fn empty(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            entries: Vec::new(),
        }
    }
}

fn read_text(path: &Path) -> Result<String, ConfigFileError> {
    let read_err = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    // One byte more than allowed tells a too large file from one exactly at the limit.
    file.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(ConfigFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// The text of a plain YAML value: a string as is, numbers and booleans as written
/// (`1` stays `1`, so `retry-after: 1` means one minute as on the command line).
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks every entry against `cmd`'s arguments and returns the command-line words for
/// the entries whose argument `matches` got from neither the command line nor the
/// environment (a flag or a variable wins over the file).
///
/// Keys are long flag names or their aliases, compared without regard to ASCII case.
/// Every entry is checked, also those overridden, so a broken file never starts.
///
/// # Errors
/// An unknown key, a flag set twice (e.g. as `password` and `passwordFile`), a list
/// for a single-valued flag, or a value the flag's parser refuses.
pub fn merge(
    cmd: &clap::Command,
    matches: &ArgMatches,
    settings: &FileSettings,
) -> Result<(Vec<OsString>, AppliedFile), ConfigFileError> {
    let mut words = Vec::new();
    let mut applied = AppliedFile {
        path: settings.path.clone(),
        applied: Vec::new(),
        overridden: Vec::new(),
    };
    let mut seen: Vec<(&str, &str)> = Vec::new(); // (arg id, key)
    for entry in &settings.entries {
        let bad = |message: String| ConfigFileError::BadValue {
            path: settings.path.clone(),
            key: entry.key.clone(),
            message,
        };
        let arg = find_arg(cmd, &entry.key).ok_or_else(|| {
            if entry.key.eq_ignore_ascii_case("config") {
                bad("a config file cannot name another one".to_owned())
            } else {
                ConfigFileError::UnknownKey {
                    path: settings.path.clone(),
                    key: entry.key.clone(),
                }
            }
        })?;
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        if let Some((_, first)) = seen.iter().find(|(seen_id, _)| *seen_id == id) {
            return Err(bad(format!("sets --{long} again (also set as {first:?})")));
        }
        seen.push((id, &entry.key));
        let entry_words = words_for(cmd, arg, long, &entry.value).map_err(bad)?;
        check(cmd, &entry_words).map_err(bad)?;
        match matches.value_source(id) {
            Some(ValueSource::DefaultValue) | None => {
                words.extend(entry_words);
                applied.applied.push((entry.key.clone(), long.to_owned()));
            }
            Some(_) => applied.overridden.push(entry.key.clone()),
        }
    }
    Ok((words, applied))
}

fn find_arg<'c>(cmd: &'c clap::Command, key: &str) -> Option<&'c Arg> {
    cmd.get_arguments().find(|arg| {
        let Some(long) = arg.get_long() else {
            return false;
        };
        !NOT_KEYS.contains(&long)
            && std::iter::once(long)
                .chain(arg.get_all_aliases().into_iter().flatten())
                .any(|name| name.eq_ignore_ascii_case(key))
    })
}

/// The words a user would type for this value: `--long=value` per value, a bare
/// `--long` for a true on/off flag, `--long` N times for a counted flag (`verbose: 2`).
fn words_for(
    cmd: &clap::Command,
    arg: &Arg,
    long: &str,
    value: &Value,
) -> Result<Vec<OsString>, String> {
    let one = || match value {
        Value::Scalar(s) => Ok(s.as_str()),
        Value::List(_) => Err(format!("--{long} takes one value, not a list")),
    };
    let flag = || OsString::from(format!("--{long}"));
    match arg.get_action() {
        ArgAction::SetTrue => {
            let text = one()?;
            let on = BoolishValueParser::new()
                .parse_ref(cmd, Some(arg), std::ffi::OsStr::new(text))
                .map_err(|_| {
                    format!("expected true or false (or yes/no, on/off, 1/0), not {text:?}")
                })?;
            Ok(if on { vec![flag()] } else { Vec::new() })
        }
        ArgAction::Count => {
            let text = one()?;
            let times: u8 = text
                .parse()
                .map_err(|_| format!("expected a count from 0 to 255, not {text:?}"))?;
            Ok(vec![flag(); usize::from(times)])
        }
        ArgAction::Append => Ok(match value {
            Value::Scalar(s) => vec![OsString::from(format!("--{long}={s}"))],
            Value::List(items) => items
                .iter()
                .map(|s| OsString::from(format!("--{long}={s}")))
                .collect(),
        }),
        _ => Ok(vec![OsString::from(format!("--{long}={}", one()?))]),
    }
}

/// Runs clap's parser for these words alone, so a bad value is reported against its
/// key rather than as if the user had typed it.
fn check(cmd: &clap::Command, words: &[OsString]) -> Result<(), String> {
    let argv = std::iter::once(OsString::from(cmd.get_name())).chain(words.iter().cloned());
    match cmd.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(err) => {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid value");
            Err(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::{CommandFactory, Parser};
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<FileSettings, ConfigFileError> {
        FileSettings::parse(Path::new("tm.yaml"), text)
    }

    fn entries(text: &str) -> Vec<(String, Value)> {
        parse(text)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    /// Parses `args`, merges `yaml` and parses again, as the binary does.
    fn merged(args: &[&str], yaml: &str) -> Result<(Cli, AppliedFile), ConfigFileError> {
        let argv = crate::cli::normalize_args(std::iter::once("tm").chain(args.iter().copied()));
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(&argv).unwrap();
        let (words, applied) = merge(&cmd, &matches, &parse(yaml)?)?;
        let mut all: Vec<OsString> = vec!["tm".into()];
        all.extend(words);
        all.extend(argv.into_iter().skip(1));
        Ok((Cli::try_parse_from(all).unwrap(), applied))
    }

    #[test]
    fn scalars_keep_their_text_and_lists_stay_lists() {
        let got = entries(
            "# comment\nlisten: \":9000\"\nretry-after: 1\nmax-body-size: 1.5\n\
             preserve-host: true\nmirror: [http://a:1, 'http://b:2']\ntargets: admin\n",
        );
        let s = |k: &str, v: &str| (k.to_owned(), Value::Scalar(v.to_owned()));
        assert_eq!(
            got,
            [
                s("listen", ":9000"),
                s("retry-after", "1"),
                s("max-body-size", "1.5"),
                s("preserve-host", "true"),
                (
                    "mirror".to_owned(),
                    Value::List(vec!["http://a:1".into(), "http://b:2".into()])
                ),
                s("targets", "admin"),
            ]
        );
    }

    #[test]
    fn empty_and_comment_only_files_have_no_entries() {
        for text in ["", "# nothing here\n", "---\n", "~\n"] {
            assert_eq!(entries(text), [], "{text:?}");
        }
    }

    #[test]
    fn malformed_files_are_refused_with_the_file_name() {
        let cases = [
            ("listen: [unclosed\n", "not valid YAML"),
            ("- a\n- b\n", "top level"),
            ("just a string\n", "top level"),
            ("a: 1\n---\nb: 2\n", "2 YAML documents"),
            ("listen:\n", "\"listen\": has no value"),
            ("mirror: {a: 1}\n", "\"mirror\": expected a value or a list"),
            (
                "mirror: [[a]]\n",
                "\"mirror\": a list may only hold plain values",
            ),
            ("listen: a\nlisten: b\n", "duplicated key"),
            ("? [a]\n: 1\n", "every key must be a flag name"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("config file tm.yaml"), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: want {want:?} in {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn file_values_fill_what_flags_leave_unset() {
        let (cli, applied) = merged(
            &[],
            "listen: 127.0.0.1:9000\nretry-after: 1\nmirror: http://a:1,http://b:2\n\
             preserve-host: yes\nverbose: 2\nlog-format: json\nthreads: 3\n",
        )
        .unwrap();
        assert_eq!(cli.listen, "127.0.0.1:9000");
        assert_eq!(cli.retry_after, std::time::Duration::from_secs(60));
        // Split into URLs by the config (a mirror line may contain commas).
        assert_eq!(cli.mirror, ["http://a:1,http://b:2"]);
        assert!(cli.preserve_host);
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.log_format, crate::cli::LogFormat::Json);
        assert_eq!(cli.threads, Some(3));
        assert_eq!(applied.key_for_flag("listen"), Some("listen"));
        assert!(applied.overridden.is_empty());
    }

    #[test]
    fn flags_win_over_the_file() {
        let (cli, applied) = merged(
            &["--listen", ":1", "-mirror", "http://flag:1", "-v"],
            "listen: :2\nmirror: [http://file:1, http://file:2]\nverbose: 3\ntargets: t\n",
        )
        .unwrap();
        assert_eq!(cli.listen, ":1");
        assert_eq!(cli.mirror, ["http://flag:1"]);
        assert_eq!(cli.verbose, 1);
        assert_eq!(cli.targets, "t");
        assert_eq!(applied.overridden, ["listen", "mirror", "verbose"]);
        assert_eq!(applied.key_for_flag("listen"), None);
        assert_eq!(applied.key_for_flag("targets"), Some("targets"));
    }

    #[test]
    fn aliases_and_other_cases_name_the_same_flag() {
        let (cli, applied) = merged(&[], "passwordFile: users.txt\nRetry-After: 2m\n").unwrap();
        assert_eq!(cli.password, Some(PathBuf::from("users.txt")));
        assert_eq!(cli.retry_after, std::time::Duration::from_secs(120));
        assert_eq!(applied.key_for_flag("password"), Some("passwordFile"));
    }

    #[test]
    fn false_on_off_flags_and_empty_lists_set_nothing() {
        let (cli, _) = merged(&[], "preserve-host: off\nmirror: []\nverbose: 0\n").unwrap();
        assert!(!cli.preserve_host);
        assert!(cli.mirror.is_empty());
        assert_eq!(cli.verbose, 0);
    }

    #[test]
    fn bad_entries_name_the_file_and_the_key() {
        let cases = [
            ("bogus: 1\n", "unknown key \"bogus\""),
            ("l: :1\n", "unknown key \"l\""),
            ("help: true\n", "unknown key \"help\""),
            (
                "config: other.yaml\n",
                "key \"config\": a config file cannot",
            ),
            (
                "retry-after: soon\n",
                "key \"retry-after\": invalid value 'soon'",
            ),
            ("max-queued-requests: 0\n", "key \"max-queued-requests\""),
            (
                "listen: [a, b]\n",
                "key \"listen\": --listen takes one value",
            ),
            (
                "preserve-host: maybe\n",
                "key \"preserve-host\": expected true or false",
            ),
            ("verbose: lots\n", "key \"verbose\": expected a count"),
            (
                "log-format: xml\n",
                "key \"log-format\": invalid value 'xml'",
            ),
            (
                "password: a\npasswordFile: b\n",
                "key \"passwordFile\": sets --password again (also set as \"password\")",
            ),
        ];
        for (text, want) in cases {
            let err = merged(&[], text).unwrap_err().to_string();
            assert!(err.starts_with("config file tm.yaml"), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: want {want:?} in {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        // Checked even when a flag overrides it: a broken file never starts.
        let err = merged(&["--retry-after", "1s"], "retry-after: soon\n").unwrap_err();
        assert!(err.to_string().contains("retry-after"), "{err}");
    }

    #[test]
    fn default_paths_are_cwd_then_home() {
        assert_eq!(
            default_paths(Some(Path::new("/home/u"))),
            [
                PathBuf::from("./trafficmirror.yaml"),
                PathBuf::from("/home/u/.trafficmirror/trafficmirror.yaml")
            ]
        );
        assert_eq!(default_paths(None), [PathBuf::from("./trafficmirror.yaml")]);
        assert_eq!(default_paths(Some(Path::new(""))).len(), 1);
    }

    #[test]
    fn find_takes_the_first_existing_file_and_skips_missing_ones() {
        let dir = std::env::temp_dir().join(format!("tm-file-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.yaml");
        let first = dir.join("first.yaml");
        let second = dir.join("second.yaml");
        std::fs::write(&first, "listen: :1\n").unwrap();
        std::fs::write(&second, "listen: :2\n").unwrap();
        let found = FileSettings::find(&[missing.clone(), first.clone(), second.clone()])
            .unwrap()
            .unwrap();
        assert_eq!(found.path, first);
        assert_eq!(
            FileSettings::find(std::slice::from_ref(&missing)).unwrap(),
            None
        );
        // An existing but broken file is an error, not skipped.
        std::fs::write(&first, "listen: [\n").unwrap();
        assert!(FileSettings::find(&[first.clone(), second.clone()]).is_err());
        // A directory where the file should be cannot be read.
        let err = FileSettings::read(&dir).unwrap_err().to_string();
        assert!(err.starts_with("cannot read config file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn yaml_like_text_never_panics(text in "[a-z:\\-\\[\\]{},'\"#&*!|>? \\n]{0,120}") {
            let _ = parse(&text);
        }

        #[test]
        fn merge_never_panics(
            key in prop::sample::select(vec![
                "listen", "mirror", "verbose", "preserve-host", "max-queued-requests",
                "retry-after", "max-body-size", "main-timeout", "log-format", "threads",
                "passwordFile", "config", "bogus",
            ]),
            values in prop::collection::vec("\\PC{0,12}", 0..3),
            as_list in any::<bool>(),
        ) {
            let quoted: Vec<String> =
                values.iter().map(|v| serde_json::to_string(v).unwrap()).collect();
            let yaml = if as_list {
                format!("{key}: [{}]\n", quoted.join(", "))
            } else {
                format!("{key}: {}\n", quoted.first().map_or("x", String::as_str))
            };
            if let Err(err) = merged(&[], &yaml) {
                let text = err.to_string();
                prop_assert!(text.starts_with("config file tm.yaml"), "{}", text);
                prop_assert_eq!(text.lines().count(), 1, "{}", text);
            }
        }

        #[test]
        fn quoted_strings_round_trip(value in "\\PC{0,40}") {
            let quoted = serde_json::to_string(&value).unwrap();
            let got = entries(&format!("targets: {quoted}\n"));
            prop_assert_eq!(got, vec![("targets".to_owned(), Value::Scalar(value))]);
        }
    }
}
