//! Property tests of the configuration's durations, through the public
//! `Config::load` (file-less, with `TETHER_<SECTION>_<KEY>` overrides): a
//! humantime value parses to exactly its duration, and anything else is a
//! `ConfigError`, never a panic.

use std::time::Duration;

use proptest::prelude::*;
use tether::config::Config;

/// Every duration key, as its environment variable.
const DURATION_VARS: &[&str] = &[
    "TETHER_SERVER_BACKEND_CONNECT_TIMEOUT",
    "TETHER_SERVER_HANDSHAKE_TIMEOUT",
    "TETHER_SERVER_SHUTDOWN_GRACE",
    "TETHER_SESSION_LINGER",
    "TETHER_SESSION_PING_INTERVAL",
    "TETHER_SESSION_PING_TIMEOUT",
    "TETHER_JOURNAL_SYNC_INTERVAL",
    "TETHER_JOURNAL_RETENTION",
    "TETHER_JOURNAL_MAX_FRAME_AGE",
];

/// Loads the defaults with one variable set.
fn load(var: &str, value: &str) -> Result<Config, tether::config::ConfigError> {
    Config::load(None, [(var.to_owned(), value.to_owned())])
}

/// One humantime term and its length: `<n><unit>`.
fn term() -> impl Strategy<Value = (String, Duration)> {
    let unit = prop_oneof![
        Just(("ms", Duration::from_millis(1))),
        Just(("s", Duration::from_secs(1))),
        Just(("m", Duration::from_secs(60))),
        Just(("h", Duration::from_secs(3600))),
    ];
    (1u32..=90, unit).prop_map(|(n, (name, len))| (format!("{n}{name}"), len * n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `1h 30m`-style values, one to three terms, parse to their sum.
    #[test]
    fn humantime_durations_parse_exactly(terms in proptest::collection::vec(term(), 1..=3), spaced: bool) {
        let text = terms.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(if spaced { " " } else { "" });
        let want: Duration = terms.iter().map(|(_, d)| *d).sum();
        prop_assume!(want >= Duration::from_secs(1));
        let config = load("TETHER_SESSION_LINGER", &text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        prop_assert_eq!(config.session.linger, want, "{}", text);
    }

    /// Text that is not a duration is an error for every duration key.
    #[test]
    fn garbage_is_an_error(var in proptest::sample::select(DURATION_VARS), text in "[^0-9]{0,12}|[0-9]{1,4}[a-z]{0,1}x|-[0-9]{1,3}s|[0-9]{1,3}[.][.][0-9]s") {
        prop_assert!(load(var, &text).is_err(), "{} = {:?} was accepted", var, text);
    }

    /// Any text at all, including numbers too large for a `Duration`,
    /// gives a `Config` or a `ConfigError`: `load` never panics.
    #[test]
    fn load_never_panics(var in proptest::sample::select(DURATION_VARS), text in "\\PC{0,30}|[0-9]{15,30}(ns|ms|s|m|h|d|w|y)") {
        let _ = load(var, &text);
    }
}
