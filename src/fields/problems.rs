//! Where a configuration problem is, and how it is told to a person.

use std::fmt;
use std::ops::Range;

/// A problem found in a configuration file, with its place and a suggestion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to write instead, when there is something useful to suggest.
    pub hint: Option<String>,
}

/// Every problem in one file, reported together so a user fixes them in one pass.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
            if let Some(hint) = &p.hint {
                write!(f, "\n    help: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte offsets into 1-based line and column numbers (columns count characters).
#[derive(Debug, Clone, Copy)]
pub struct SourceText<'a> {
    text: &'a str,
}

impl<'a> SourceText<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text }
    }

    pub fn problem(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Problem {
        let (line, column) = self.line_column(span.start);
        Problem {
            line,
            column,
            message: message.into(),
            hint,
        }
    }

    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..self.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn floor_char_boundary(&self, mut offset: usize) -> usize {
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = SourceText::new("a = 1\nbé = \"x\"\n");
        assert_eq!(text.line_column(0), (1, 1));
        assert_eq!(text.line_column(6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(text.line_column(9), (2, 3));
    }
}
