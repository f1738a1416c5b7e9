//! Configuration errors that say where they are.
//!
//! Every problem found in a configuration carries the key path it concerns
//! (`routes[1].match.path_regex`); for TOML sources the loader resolves that path
//! to a line and column in the file. The same path serves the admin API, whose
//! JSON bodies have no lines worth quoting.

use std::fmt;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Where in the document a value lives, e.g. `clusters[0].endpoints[2].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<PathSegment>);

impl KeyPath {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.to_owned()));
        Self(segments)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        Self(segments)
    }

    /// The segments from the root down.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A line and column in a source file, both starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The location of a byte offset within `text`.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self { line, column }
    }
}

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The key the problem is about (empty for whole-document problems).
    pub path: KeyPath,
    /// What is wrong, in one sentence.
    pub message: String,
    /// A suggestion, such as the closest valid name.
    pub hint: Option<String>,
    /// Source file name, when the configuration came from a file.
    pub file: Option<String>,
    /// Line and column in that file, when known.
    pub location: Option<Location>,
}

impl Diagnostic {
    /// A problem at `path`; the location is filled in by the loader.
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
            hint: None,
            file: None,
            location: None,
        }
    }

    /// The same problem with a hint attached.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.location) {
            (Some(file), Some(loc)) => write!(f, "{file}:{}:{}: ", loc.line, loc.column)?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(loc)) => write!(f, "{}:{}: ", loc.line, loc.column)?,
            (None, None) => {}
        }
        if !self.path.segments().is_empty() {
            write!(f, "`{}`: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one configuration, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// `did you mean "x"?` for the candidate closest to `given`, if any is close.
pub fn did_you_mean<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(given, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean \"{c}\"?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_displays_like_the_document() {
        let path = KeyPath::root().key("routes").index(2).key("match").key("host");
        assert_eq!(path.to_string(), "routes[2].match.host");
    }

    #[test]
    fn offset_becomes_line_and_column() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(Location::of_offset(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of_offset(text, 6), Location { line: 2, column: 1 });
        assert_eq!(Location::of_offset(text, 11), Location { line: 2, column: 6 });
    }

    #[test]
    fn suggests_close_names_only() {
        let names = ["round_robin", "least_connections"];
        assert_eq!(
            did_you_mean("round_robbin", names).as_deref(),
            Some("did you mean \"round_robin\"?")
        );
        assert_eq!(did_you_mean("zzz", names), None);
    }
}
