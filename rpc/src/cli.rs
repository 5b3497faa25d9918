//! Command-line parsing shared by the binaries: clap flags, each also readable from its
//! `SLUICE_*` environment variable, and `--config FILE`, a TOML file that can set any of them.
//!
//! Precedence: a flag on the command line, then its environment variable, then the config
//! file, then the built-in default. The file's values become the flags' defaults (clap prefers
//! the command line and the environment to a default), so they go through the same parsers.
//!
//! A file's keys are the long flag names, kebab-case (`wal-flush-bytes`) or snake_case
//! (`wal_flush_bytes`); its values are strings, integers, floats or booleans. Any mistake (an
//! unknown key, a table or array, bad TOML, an unreadable file, a value the flag refuses) is one
//! line on stderr and exit code 2, as a bad flag is.

use clap::{ArgAction, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Id of the flag that names the config file (the `config` field of a binary's `Args`).
const CONFIG_ID: &str = "config";

/// Why parsing stopped.
#[derive(Debug)]
pub enum CliError {
    /// From clap: a bad flag, or `--help` / `--version` (not errors: [`clap::Error::use_stderr`]
    /// is false).
    Clap(clap::Error),
    /// The config file: unreadable, bad TOML, an unknown key or a bad value (one line).
    Config(String),
}

/// Parses the process's arguments into `A`, with `--config FILE` (or its environment variable)
/// setting defaults. On a mistake prints one line, `BIN: error: ...`, and exits with code 2;
/// `--help` and `--version` print and exit as usual.
pub fn parse<A: Parser>(bin: &str) -> A {
    match try_parse_from(std::env::args_os()) {
        Ok(a) => a,
        Err(CliError::Clap(e)) if !e.use_stderr() => e.exit(),
        Err(CliError::Clap(e)) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("{bin}: error: {first} (see --help)");
            std::process::exit(2);
        }
        Err(CliError::Config(msg)) => {
            eprintln!("{bin}: error: {msg}");
            std::process::exit(2);
        }
    }
}

/// [`parse`] without exiting: `args` includes the program name, as `std::env::args_os` does.
pub fn try_parse_from<A, I, T>(args: I) -> Result<A, CliError>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = A::command();
    if let Some(path) = config_path(&cmd, &args) {
        cmd = apply_config(cmd, &path)?;
    }
    let matches = cmd.try_get_matches_from_mut(args).map_err(CliError::Clap)?;
    A::from_arg_matches(&matches).map_err(|e| CliError::Clap(e.format(&mut cmd)))
}

/// The config file the arguments or the environment name, found before the full parse (which
/// needs the file's values as defaults). The last `--config` wins; none after `--`.
fn config_path(cmd: &clap::Command, args: &[OsString]) -> Option<PathBuf> {
    let arg = cmd.get_arguments().find(|a| a.get_id() == CONFIG_ID)?;
    let long = format!("--{}", arg.get_long()?);
    let with_eq = format!("{long}=");
    let mut found = None;
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        } else if s == long {
            found = rest.next().cloned();
        } else if let Some(v) = s.strip_prefix(&with_eq) {
            found = Some(v.into());
        }
    }
    found.or_else(|| arg.get_env().and_then(std::env::var_os)).filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// Reads the file and makes each of its values the default of its flag.
fn apply_config(mut cmd: clap::Command, path: &Path) -> Result<clap::Command, CliError> {
    let err = |msg: String| CliError::Config(format!("config {}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(toml_error(&text, &e)))?;
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != CONFIG_ID && settable(a.get_action()))
            .ok_or_else(|| err(format!("unknown key \"{key}\" (see --help for flags)")))?;
        if let Some((_, other)) = seen.iter().find(|(l, _)| *l == long) {
            return Err(err(format!("keys \"{other}\" and \"{key}\" set the same flag")));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => return Err(err(format!("key \"{key}\": expected a string, number or boolean, not {}", other.type_str()))),
        };
        // The flag's own parser, on the value alone (an error names the key, not a default).
        let alone = arg.clone().env(None).action(ArgAction::Set).num_args(1).required(false);
        let check = clap::Command::new("config").no_binary_name(true).arg(alone);
        if let Err(e) = check.try_get_matches_from([format!("--{long}={text}")]) {
            return Err(err(format!("key \"{key}\": {}", clap_error_line(&e))));
        }
        let id = arg.get_id().clone();
        seen.push((long, key.as_str()));
        // clap keeps a default as &'static str (without its `string` feature): a few bytes per
        // key, once per process.
        let text: &'static str = text.leak();
        cmd = cmd.mut_arg(id, |a| a.default_value(text));
    }
    Ok(cmd)
}

/// Whether a file may set a flag with this action: one that takes a value, or an on/off switch
/// (whose default the file's `true` or `false` replaces); not help, version or counts.
fn settable(action: &ArgAction) -> bool {
    action.takes_values() || matches!(action, ArgAction::SetTrue | ArgAction::SetFalse)
}

/// A TOML error on one line: `line L, column C: MESSAGE`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {msg}")
        }
        None => format!("invalid TOML: {msg}"),
    }
}

/// A clap error's first line, without `error: `, with the values it accepts when it lists them.
fn clap_error_line(e: &clap::Error) -> String {
    let msg = e.to_string();
    let mut line = msg.lines().next().unwrap_or("invalid value").trim_start_matches("error: ").to_string();
    if let Some(clap::error::ContextValue::Strings(valid)) = e.get(clap::error::ContextKind::ValidValue) {
        line.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A small stand-in for a binary's `Args`.
    #[derive(Parser, Debug)]
    #[command(name = "t")]
    struct Args {
        #[arg(long, env = "SLUICE_CLI_TEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "SLUICE_CLI_TEST_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, env = "SLUICE_CLI_TEST_WAL_FLUSH_BYTES")]
        wal_flush_bytes: Option<usize>,
        #[arg(long, env = "SLUICE_CLI_TEST_NODE_ID", default_value_t = 1)]
        node_id: i32,
        #[arg(long, env = "SLUICE_CLI_TEST_HEDGE", default_value_t = 95.0)]
        hedge: f64,
        #[arg(long, env = "SLUICE_CLI_TEST_AUTO_CREATE", default_value_t = true, action = ArgAction::Set)]
        auto_create: bool,
        #[arg(long, env = "SLUICE_CLI_TEST_INTERVAL_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
        #[arg(long)]
        verbose: bool,
    }

    /// A config file with this text; removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> File {
            let path = std::env::temp_dir().join(format!("sluice-cli-test-{}-{name}.toml", std::process::id()));
            std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
            File(path)
        }
        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse(args: &[&str]) -> Result<Args, CliError> {
        try_parse_from(std::iter::once("t").chain(args.iter().copied()))
    }

    fn config_error(args: &[&str]) -> String {
        match parse(args) {
            Err(CliError::Config(msg)) => {
                println!("{msg}");
                msg
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn file_values_are_used() {
        let f = File::new("used", "data_dir = \"/tmp/x\"\nwal_flush_bytes = 1024\nhedge = 0.5\nauto_create = false\nverbose = true\n");
        let a = parse(&[&f.arg()]).unwrap();
        assert_eq!(a.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(a.wal_flush_bytes, Some(1024));
        assert_eq!(a.hedge, 0.5);
        assert!(!a.auto_create);
        assert!(a.verbose);
        assert_eq!(a.node_id, 1, "a key the file leaves out keeps its default");
        assert_eq!(a.config, Some(f.0.clone()));
        // `--config FILE` (two arguments) works too.
        let b = parse(&["--config", f.0.to_str().unwrap()]).unwrap();
        assert_eq!(b.wal_flush_bytes, Some(1024));
        // No file: defaults.
        let c = parse(&[]).unwrap();
        assert_eq!((c.data_dir, c.wal_flush_bytes, c.auto_create, c.verbose), (PathBuf::from("./data"), None, true, false));
    }

    #[test]
    fn kebab_and_snake_keys() {
        let f = File::new("keys", "wal-flush-bytes = 7\nnode_id = 3\n\"interval-ms\" = 5\n");
        let a = parse(&[&f.arg()]).unwrap();
        assert_eq!((a.wal_flush_bytes, a.node_id, a.interval_ms), (Some(7), 3, 5));
        let f = File::new("both", "wal-flush-bytes = 7\nwal_flush_bytes = 8\n");
        let msg = config_error(&[&f.arg()]);
        assert!(msg.contains("set the same flag"), "{msg}");
    }

    #[test]
    fn flag_beats_file() {
        let f = File::new("flag", "node-id = 3\nauto-create = false\n");
        let a = parse(&[&f.arg(), "--node-id", "4", "--auto-create", "true"]).unwrap();
        assert_eq!((a.node_id, a.auto_create), (4, true));
        // Wherever --config stands.
        let a = parse(&["--node-id=5", &f.arg()]).unwrap();
        assert_eq!(a.node_id, 5);
    }

    #[test]
    fn env_beats_file() {
        // Variables of their own: tests run in parallel, and the others' flags must not see them.
        #[derive(Parser, Debug)]
        struct EnvArgs {
            #[arg(long, env = "SLUICE_CLI_ENV_TEST_CONFIG")]
            config: Option<PathBuf>,
            #[arg(long, env = "SLUICE_CLI_ENV_TEST_WAL_FLUSH_BYTES")]
            wal_flush_bytes: Option<usize>,
            #[arg(long, env = "SLUICE_CLI_ENV_TEST_NODE_ID", default_value_t = 1)]
            node_id: i32,
        }
        let f = File::new("env", "wal-flush-bytes = 7\nnode-id = 3\n");
        std::env::set_var("SLUICE_CLI_ENV_TEST_WAL_FLUSH_BYTES", "99");
        std::env::set_var("SLUICE_CLI_ENV_TEST_CONFIG", &f.0);
        let a: Result<EnvArgs, _> = try_parse_from(["t"]);
        let b: Result<EnvArgs, _> = try_parse_from(["t", "--wal-flush-bytes", "5"]);
        std::env::remove_var("SLUICE_CLI_ENV_TEST_WAL_FLUSH_BYTES");
        std::env::remove_var("SLUICE_CLI_ENV_TEST_CONFIG");
        let (a, b) = (a.unwrap(), b.unwrap());
        // The file, found through its variable, sets node-id; the variable beats its wal-flush-bytes.
        assert_eq!((a.wal_flush_bytes, a.node_id), (Some(99), 3));
        assert_eq!(a.config, Some(f.0.clone()));
        assert_eq!(b.wal_flush_bytes, Some(5), "a flag beats the variable");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let f = File::new("unknown", "node-id = 3\nfoo = 1\n");
        let msg = config_error(&[&f.arg()]);
        assert_eq!(msg, format!("config {}: unknown key \"foo\" (see --help for flags)", f.0.display()));
        // Nor can a file name another config file, or set --help.
        for key in ["config", "help"] {
            let f = File::new(key, &format!("{key} = \"x\"\n"));
            assert!(config_error(&[&f.arg()]).contains(&format!("unknown key \"{key}\"")));
        }
    }

    #[test]
    fn bad_toml_is_an_error() {
        let f = File::new("bad", "node-id = 3\ndata-dir = /tmp\n");
        let msg = config_error(&[&f.arg()]);
        assert!(msg.starts_with(&format!("config {}: invalid TOML at line 2, column 12: ", f.0.display())), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn bad_shapes_and_values_are_errors() {
        let f = File::new("table", "[node-id]\nx = 3\n");
        assert!(config_error(&[&f.arg()]).ends_with("key \"node-id\": expected a string, number or boolean, not table"));
        let f = File::new("section", "[dataplane]\nnode-id = 3\n");
        assert!(config_error(&[&f.arg()]).ends_with("unknown key \"dataplane\" (see --help for flags)"));
        let f = File::new("array", "data-dir = [\"a\"]\n");
        assert!(config_error(&[&f.arg()]).ends_with("key \"data-dir\": expected a string, number or boolean, not array"));
        let f = File::new("int", "node-id = \"three\"\n");
        let msg = config_error(&[&f.arg()]);
        assert!(msg.contains("key \"node-id\": invalid value 'three' for '--node-id"), "{msg}");
        let f = File::new("range", "interval-ms = 0\n");
        let msg = config_error(&[&f.arg()]);
        assert!(msg.contains("key \"interval-ms\": invalid value '0'"), "{msg}");
        let f = File::new("bool", "auto-create = \"yes\"\n");
        let msg = config_error(&[&f.arg()]);
        assert!(msg.contains("key \"auto-create\": invalid value 'yes'") && msg.contains("true, false"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let msg = config_error(&["--config", "/nonexistent/sluice.toml"]);
        assert!(msg.starts_with("config /nonexistent/sluice.toml: cannot read: "), "{msg}");
    }

    #[test]
    fn flag_errors_and_help_still_come_from_clap() {
        assert!(matches!(parse(&["--nope"]), Err(CliError::Clap(e)) if e.use_stderr()));
        assert!(matches!(parse(&["--help"]), Err(CliError::Clap(e)) if !e.use_stderr()));
        // The config file's own flag shows in the help.
        let help = <Args as clap::CommandFactory>::command().render_long_help().to_string();
        assert!(help.contains("--config <CONFIG>"), "{help}");
    }
}
