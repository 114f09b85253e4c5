//! The command line of the binaries (`chat-load`, `chat-client`,
//! `chat-traces`): one small parser instead of a loop in each, and no
//! dependency for it.
//!
//! A command line is an optional subcommand (its first word, unless that
//! starts with `-`), then `--name value` options, `--name` switches and
//! positional words. Reading is lenient: [`Args::value`] is the word after
//! the first `--name`, whatever it is. [`Args::only`] is the strict check a
//! binary runs first when a typo must not start a run with defaults.

use anyhow::{Context, bail};
use std::str::FromStr;

/// The words of a command line, without the program name.
#[derive(Debug, Clone)]
pub struct Args {
    words: Vec<String>,
}

impl Args {
    /// The process's own command line.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    /// These words (without the program name), as from a command line.
    pub fn new<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Args {
            words: words.into_iter().map(Into::into).collect(),
        }
    }

    /// `--help` or `-h` anywhere.
    pub fn help(&self) -> bool {
        self.words.iter().any(|w| w == "--help" || w == "-h")
    }

    /// The subcommand: the first word, unless it starts with `-`.
    pub fn command(&self) -> Option<&str> {
        self.words
            .first()
            .map(String::as_str)
            .filter(|w| !w.starts_with('-'))
    }

    /// The words after the subcommand.
    fn rest(&self) -> &[String] {
        &self.words[usize::from(self.command().is_some())..]
    }

    /// The positional words after the subcommand, in order: every word that
    /// is neither a `--name` nor right after one (each `--name` is taken to
    /// have a value, so a switch followed by a positional word hides it).
    pub fn positional(&self) -> Vec<&str> {
        let rest = self.rest();
        rest.iter()
            .enumerate()
            .filter(|&(i, w)| !w.starts_with("--") && (i == 0 || !rest[i - 1].starts_with("--")))
            .map(|(_, w)| w.as_str())
            .collect()
    }

    /// The word after the first `name`, if there is one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.words
            .iter()
            .position(|w| w == name)
            .and_then(|i| self.words.get(i + 1))
            .map(String::as_str)
    }

    /// The value of `name`, or an error that says it is missing, followed
    /// by `usage`.
    pub fn required(&self, name: &str, usage: &str) -> anyhow::Result<&str> {
        self.value(name)
            .with_context(|| format!("{name} is required\n{usage}"))
    }

    /// The value of `name` as a number, `default` without it.
    pub fn number<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.value(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .ok()
                .with_context(|| format!("{name} must be a number")),
        }
    }

    /// Whether switch `name` is given.
    pub fn flag(&self, name: &str) -> bool {
        self.words.iter().any(|w| w == name)
    }

    /// Refuses, with `usage`, any word after the subcommand but the options
    /// `with_value` (each with its value: the next word, whatever it is) and
    /// the `switches`: an unknown argument, a positional word, an option at
    /// the end without its value.
    pub fn only(&self, with_value: &[&str], switches: &[&str], usage: &str) -> anyhow::Result<()> {
        let mut rest = self.rest().iter();
        while let Some(word) = rest.next() {
            if with_value.contains(&word.as_str()) {
                if rest.next().is_none() {
                    bail!("{word} needs a value\n{usage}");
                }
            } else if !switches.contains(&word.as_str()) {
                bail!("unknown argument {word}\n{usage}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    const USAGE: &str = "usage: test run [--rate N] [--quiet]";

    fn args(line: &str) -> Args {
        Args::new(line.split_whitespace())
    }

    #[test]
    fn a_value_is_the_word_after_its_name() {
        let a = args("run --url http://127.0.0.1:1 --users 5");
        assert_eq!(a.value("--url"), Some("http://127.0.0.1:1"));
        assert_eq!(a.value("--users"), Some("5"));
        assert_eq!(a.value("--rate"), None);
        // At the end, without a value: none (only() refuses it).
        assert_eq!(args("--user").value("--user"), None);
    }

    #[test]
    fn a_number_parses_defaults_and_says_when_it_is_not_one() {
        let a = args("run --rate 2.5 --users 7 --group-size two");
        assert_eq!(a.number("--rate", 1.0).unwrap(), 2.5);
        assert_eq!(a.number::<usize>("--users", 2000).unwrap(), 7);
        assert_eq!(a.number::<usize>("--warmup", 10).unwrap(), 10);
        let error = a.number::<usize>("--group-size", 2).unwrap_err();
        assert_eq!(error.to_string(), "--group-size must be a number");
        // Not an integer where one is wanted.
        let error = a.number::<usize>("--rate", 1).unwrap_err();
        assert_eq!(error.to_string(), "--rate must be a number");
    }

    #[test]
    fn a_switch_is_there_or_not() {
        let a = args("run --rate 5 --quiet");
        assert!(a.flag("--quiet"));
        assert!(!a.flag("--loud"));
        assert!(a.only(&["--rate"], &["--quiet"], USAGE).is_ok());
    }

    #[test]
    fn a_required_value_missing_is_an_error_with_the_usage() {
        let a = args("proxy --listen 127.0.0.1:1");
        assert_eq!(a.required("--listen", USAGE).unwrap(), "127.0.0.1:1");
        let error = a.required("--to", USAGE).unwrap_err();
        assert_eq!(error.to_string(), format!("--to is required\n{USAGE}"));
    }

    #[test]
    fn an_unknown_argument_is_refused_with_the_usage() {
        let refused = |line: &str| {
            args(line)
                .only(&["--rate"], &["--quiet"], USAGE)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("run --rate 5 --bogus"),
            format!("unknown argument --bogus\n{USAGE}")
        );
        // A positional word after the subcommand, and a value given twice.
        assert_eq!(
            refused("run extra"),
            format!("unknown argument extra\n{USAGE}")
        );
        assert_eq!(
            refused("run --rate 5 6"),
            format!("unknown argument 6\n{USAGE}")
        );
        // The subcommand itself is not checked; without one every word is.
        assert!(args("run").only(&[], &[], USAGE).is_ok());
        assert_eq!(
            refused("--quiet --rate 1 -x"),
            format!("unknown argument -x\n{USAGE}")
        );
    }

    #[test]
    fn an_option_at_the_end_without_its_value_is_refused() {
        let error = args("run --quiet --rate")
            .only(&["--rate"], &["--quiet"], USAGE)
            .unwrap_err();
        assert_eq!(error.to_string(), format!("--rate needs a value\n{USAGE}"));
    }

    #[test]
    fn the_subcommand_and_positional_words() {
        let a = args("show --file traces.jsonl 123");
        assert_eq!(a.command(), Some("show"));
        assert_eq!(a.positional(), ["123"]);
        assert_eq!(a.value("--file"), Some("traces.jsonl"));
        let a = args("show 123 --file traces.jsonl abc");
        assert_eq!(a.positional(), ["123", "abc"]);
        assert_eq!(args("show").positional(), Vec::<&str>::new());
        // No subcommand: none, when the line is empty or starts with a flag.
        assert_eq!(args("").command(), None);
        let a = args("--file traces.jsonl show");
        assert_eq!(a.command(), None);
        assert_eq!(a.positional(), ["show"]);
    }

    #[test]
    fn help_anywhere() {
        assert!(args("--help").help());
        assert!(args("run --rate 5 -h").help());
        assert!(!args("run --rate 5").help());
    }
}
