//! Reading configuration text. The TOML document is parsed once with the place of every
//! key and value kept ([`toml::de::DeTable`]); each table is then read through a [`Table`]
//! whose getters report a value of the wrong type where it stands, and whose
//! [`Table::finish`] reports every key nobody asked for. Problems go into one [`Checker`],
//! so a file with ten mistakes gets ten messages, each with its line and column.
//!
//! This is the bottom of the configuration layer: it knows TOML and spans, nothing about
//! credentials, routes or the proxy.

mod problems;
mod units;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use problems::{ConfigError, Problem, SourceText};
pub use toml::Spanned;
use toml::de::{DeTable, DeValue};
pub use units::{parse_duration, parse_size};

/// A string value and where it stood in the file.
pub type Text = Spanned<String>;

/// Collects the problems of one configuration text.
#[derive(Debug)]
pub struct Checker<'t> {
    text: SourceText<'t>,
    problems: Vec<Problem>,
}

impl<'t> Checker<'t> {
    pub fn new(text: &'t str) -> Self {
        Checker {
            text: SourceText::new(text),
            problems: Vec::new(),
        }
    }

    pub fn report(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let problem = self.text.problem(span, message, hint.into());
        self.problems.push(problem);
    }

    /// How many problems were reported so far: a reader compares the count before and
    /// after to learn whether its own part was clean.
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Every problem, in the order they stand in the file.
    pub fn into_problems(mut self) -> Vec<Problem> {
        self.problems
            .sort_by_key(|p| (p.line, p.column, p.message.clone()));
        self.problems.dedup();
        self.problems
    }

    /// Reads a duration and checks it lies in `allowed`; reports and returns `None` when not.
    pub fn duration(
        &mut self,
        field: &Text,
        allowed: std::ops::RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let fmt = |d: &Duration| humantime::format_duration(*d).to_string();
        match parse_duration(field.get_ref()) {
            Err(e) => {
                self.report(
                    field.span(),
                    e,
                    "write a duration such as \"30s\", \"5m\" or \"1h30m\"".to_string(),
                );
                None
            }
            Ok(d) if !allowed.contains(&d) => {
                self.report(
                    field.span(),
                    format!(
                        "`{}` is outside the allowed range {} to {}",
                        field.get_ref(),
                        fmt(allowed.start()),
                        fmt(allowed.end())
                    ),
                    format!(
                        "write a duration between {} and {}",
                        fmt(allowed.start()),
                        fmt(allowed.end())
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// Reads a size and checks it lies in `allowed`; reports and returns `None` when not.
    pub fn size(
        &mut self,
        field: &Text,
        allowed: std::ops::RangeInclusive<usize>,
    ) -> Option<usize> {
        let fmt = |n: usize| bytesize::ByteSize(n as u64).display().iec().to_string();
        match parse_size(field.get_ref()) {
            Err(e) => {
                self.report(
                    field.span(),
                    e,
                    "write a size such as \"32MiB\" or \"512KiB\"".to_string(),
                );
                None
            }
            Ok(n) if !allowed.contains(&n) => {
                self.report(
                    field.span(),
                    format!(
                        "`{}` is outside the allowed range {} to {}",
                        field.get_ref(),
                        fmt(*allowed.start()),
                        fmt(*allowed.end())
                    ),
                    format!(
                        "write a size between {} and {}",
                        fmt(*allowed.start()),
                        fmt(*allowed.end())
                    ),
                );
                None
            }
            Ok(n) => Some(n),
        }
    }
}

/// A path as written in the config: relative paths are taken relative to the config
/// file's folder when the file is read; a leading `~/` is expanded when the config is
/// resolved against the environment (it depends on `$HOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath(PathBuf);

impl ConfigPath {
    pub fn new(written: &str, base_dir: Option<&Path>) -> Self {
        let path = PathBuf::from(written);
        match base_dir {
            Some(base) if path.is_relative() && !written.starts_with("~/") => {
                ConfigPath(base.join(path))
            }
            _ => ConfigPath(path),
        }
    }

    /// The path as it will be opened, with `~/` replaced by `home`.
    pub fn resolve(&self, home: Option<&Path>) -> PathBuf {
        match (self.0.strip_prefix("~"), home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ => self.0.clone(),
        }
    }

    /// The path as written (after joining a relative one to the config's folder).
    pub fn as_written(&self) -> &Path {
        &self.0
    }
}

/// One TOML table being read.
pub struct Table<'a, 'i> {
    entries: &'a DeTable<'i>,
    span: Range<usize>,
    asked: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(entries: &'a DeTable<'i>, span: Range<usize>) -> Self {
        Table {
            entries,
            span,
            asked: Vec::new(),
        }
    }

    /// Where the table stands (its header, or its first key for the document itself).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The keys read so far, in the order they were asked for.
    pub fn asked(&self) -> &[&'static str] {
        &self.asked
    }

    /// The value of `key` as it is, for readers that accept several shapes.
    pub fn value(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        self.entries.get(key)
    }

    fn wrong_type(cx: &mut Checker, key: &str, value: &Spanned<DeValue>, wanted: &str) {
        cx.report(
            value.span(),
            format!(
                "`{key}` must be {wanted}, not {} {}",
                article(value.get_ref().type_str()),
                value.get_ref().type_str()
            ),
            "check the value's type: strings are quoted, lists use [ ], true/false are bare"
                .to_string(),
        );
    }

    pub fn string(&mut self, cx: &mut Checker, key: &'static str) -> Option<Text> {
        let value = self.value(key)?;
        match value.get_ref().as_str() {
            Some(text) => Some(Spanned::new(value.span(), text.to_string())),
            None => {
                Self::wrong_type(cx, key, value, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, cx: &mut Checker, key: &'static str) -> Option<Spanned<bool>> {
        let value = self.value(key)?;
        match value.get_ref().as_bool() {
            Some(b) => Some(Spanned::new(value.span(), b)),
            None => {
                Self::wrong_type(cx, key, value, "true or false");
                None
            }
        }
    }

    /// A whole number within `allowed`.
    pub fn integer(
        &mut self,
        cx: &mut Checker,
        key: &'static str,
        allowed: std::ops::RangeInclusive<u64>,
    ) -> Option<Spanned<u64>> {
        let value = self.value(key)?;
        let number = value
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match number {
            Some(n) if n >= 0 && allowed.contains(&(n as u64)) => {
                Some(Spanned::new(value.span(), n as u64))
            }
            Some(n) => {
                out_of_range(cx, value.span(), key, n, &allowed);
                None
            }
            None => {
                Self::wrong_type(cx, key, value, "a whole number");
                None
            }
        }
    }

    /// A number (whole or with a fraction) within `allowed`: prices and spend in US dollars.
    pub fn number(
        &mut self,
        cx: &mut Checker,
        key: &'static str,
        allowed: std::ops::RangeInclusive<f64>,
    ) -> Option<Spanned<f64>> {
        let value = self.value(key)?;
        let number = match value.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match number {
            Some(n) if allowed.contains(&n) => Some(Spanned::new(value.span(), n)),
            Some(n) => {
                out_of_range(cx, value.span(), key, n, &allowed);
                None
            }
            None => {
                Self::wrong_type(cx, key, value, "a number");
                None
            }
        }
    }

    /// A list of strings; an element of another type is reported and skipped.
    pub fn strings(&mut self, cx: &mut Checker, key: &'static str) -> Option<Spanned<Vec<Text>>> {
        let value = self.value(key)?;
        let Some(array) = value.get_ref().as_array() else {
            Self::wrong_type(cx, key, value, "a list of strings");
            return None;
        };
        let mut items = Vec::new();
        for item in array.iter() {
            match item.get_ref().as_str() {
                Some(text) => items.push(Spanned::new(item.span(), text.to_string())),
                None => Self::wrong_type(cx, key, item, "a list of strings"),
            }
        }
        Some(Spanned::new(value.span(), items))
    }

    /// A sub-table (`[callers]`, or an inline `{ ... }`).
    pub fn table(&mut self, cx: &mut Checker, key: &'static str) -> Option<Table<'a, 'i>> {
        let value = self.value(key)?;
        match value.get_ref().as_table() {
            Some(entries) => Some(Table::new(entries, value.span())),
            None => {
                Self::wrong_type(cx, key, value, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[routes]]`).
    pub fn tables(&mut self, cx: &mut Checker, key: &'static str) -> Vec<Table<'a, 'i>> {
        let Some(value) = self.value(key) else {
            return Vec::new();
        };
        let Some(array) = value.get_ref().as_array() else {
            Self::wrong_type(cx, key, value, "a list of tables");
            return Vec::new();
        };
        array
            .iter()
            .filter_map(|item| match item.get_ref().as_table() {
                Some(entries) => Some(Table::new(entries, item.span())),
                None => {
                    Self::wrong_type(cx, key, item, "a list of tables");
                    None
                }
            })
            .collect()
    }

    /// A table of named tables (`[credentials.NAME]`), in name order.
    pub fn named_tables(
        &mut self,
        cx: &mut Checker,
        key: &'static str,
    ) -> Vec<(Text, Table<'a, 'i>)> {
        let Some(mut outer) = self.table(cx, key) else {
            return Vec::new();
        };
        let mut named = Vec::new();
        for (name, value) in outer.entries.iter() {
            match value.get_ref().as_table() {
                Some(entries) => named.push((
                    Spanned::new(name.span(), name.get_ref().to_string()),
                    Table::new(entries, name.span()),
                )),
                None => Self::wrong_type(cx, name.get_ref(), value, "a table"),
            }
        }
        outer.asked.clear();
        named
    }

    /// Keys present that no reader asked for, with the spans of key and value.
    pub fn unread(&self) -> impl Iterator<Item = (&'a str, Range<usize>, Range<usize>)> + '_ {
        self.entries
            .iter()
            .filter(|(key, _)| !self.asked.iter().any(|a| *a == key.get_ref().as_ref()))
            .map(|(key, value)| (key.get_ref().as_ref(), key.span(), value.span()))
    }

    /// Reports every key nobody asked for, naming the keys this table takes.
    pub fn finish(self, cx: &mut Checker) {
        let unread: Vec<_> = self.unread().collect();
        for (key, key_span, _) in unread {
            self.report_unknown(cx, key, key_span);
        }
    }

    /// Reports `key` as unknown to this table, naming the keys it takes.
    pub fn report_unknown(&self, cx: &mut Checker, key: &str, key_span: Range<usize>) {
        let expected: Vec<String> = self.asked.iter().map(|k| format!("`{k}`")).collect();
        cx.report(
            key_span,
            format!(
                "unknown field `{key}`, expected one of {}",
                expected.join(", ")
            ),
            "remove the key or correct its spelling; the keys this table takes are listed above"
                .to_string(),
        );
    }
}

/// Reports `key` = `n` as outside `allowed`, naming the range to write instead.
fn out_of_range<T: std::fmt::Display>(
    cx: &mut Checker,
    span: Range<usize>,
    key: &str,
    n: impl std::fmt::Display,
    allowed: &std::ops::RangeInclusive<T>,
) {
    let (start, end) = (allowed.start(), allowed.end());
    cx.report(
        span,
        format!("`{key}` = {n} is outside the allowed range {start} to {end}"),
        format!("write a number between {start} and {end}"),
    );
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Parses a whole document; syntax errors are reported (all of them that the parser can
/// recover from) and `None` returned when there were any.
pub fn parse_document<'i>(text: &'i str, cx: &mut Checker) -> Option<Spanned<DeTable<'i>>> {
    let (document, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(document);
    }
    for error in errors {
        let message = error.message().trim().to_string();
        cx.report(error.span().unwrap_or(0..0), message, None);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_and_unknown_keys_are_all_reported() {
        let text = "a = 1\nb = \"x\"\nlisten = 3\nlisen = \"y\"\nother = true\n";
        let mut cx = Checker::new(text);
        let doc = parse_document(text, &mut cx).unwrap();
        let mut table = Table::new(doc.get_ref(), doc.span());
        assert_eq!(table.string(&mut cx, "b").unwrap().get_ref(), "x");
        assert!(table.string(&mut cx, "listen").is_none());
        assert!(table.string(&mut cx, "missing").is_none());
        table.finish(&mut cx);
        let problems = cx.into_problems();
        let lines: Vec<_> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(lines, [(1, 1), (3, 10), (4, 1), (5, 1)], "{problems:#?}");
        assert!(
            problems[1]
                .message
                .contains("`listen` must be a string, not an integer")
        );
        assert!(
            problems[2]
                .message
                .starts_with("unknown field `lisen`, expected one of `b`, `listen`")
        );
    }

    #[test]
    fn several_syntax_errors_are_reported_together() {
        let text = "a = = 1\nb = \"ok\"\nc = [\n";
        let mut cx = Checker::new(text);
        assert!(parse_document(text, &mut cx).is_none());
        assert!(cx.count() >= 2, "{:#?}", cx.into_problems());
    }

    #[test]
    fn ranges_are_checked_with_what_to_write() {
        let text = "t = \"0s\"\ns = \"0B\"\n";
        let mut cx = Checker::new(text);
        let doc = parse_document(text, &mut cx).unwrap();
        let mut table = Table::new(doc.get_ref(), doc.span());
        let t = table.string(&mut cx, "t").unwrap();
        let s = table.string(&mut cx, "s").unwrap();
        assert!(
            cx.duration(&t, Duration::from_millis(1)..=Duration::from_secs(60))
                .is_none()
        );
        assert!(cx.size(&s, 1..=1024).is_none());
        let problems = cx.into_problems();
        assert!(
            problems[0]
                .message
                .contains("outside the allowed range 1ms to 1m"),
            "{problems:#?}"
        );
        assert!(
            problems[1]
                .message
                .contains("outside the allowed range 1 B to 1.0 KiB"),
            "{problems:#?}"
        );
    }

    #[test]
    fn paths_are_relative_to_the_config_and_home_is_expanded_later() {
        let base = Path::new("/etc/credproxy");
        assert_eq!(
            ConfigPath::new("keys/a", Some(base)).resolve(None),
            PathBuf::from("/etc/credproxy/keys/a")
        );
        assert_eq!(
            ConfigPath::new("~/k", Some(base)).resolve(Some(Path::new("/home/u"))),
            PathBuf::from("/home/u/k")
        );
        assert_eq!(
            ConfigPath::new("/abs", Some(base)).resolve(None),
            PathBuf::from("/abs")
        );
    }
}
