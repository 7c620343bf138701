//! Selectors for discovery: Kubernetes' label-selector syntax over an instance's
//! metadata, plus tag membership.
//!
//! ```text
//! zone=us-east-1, tier in (web,api), !canary, version!=1, tag:grpc, !tag:beta
//! ```
//!
//! Requirements are separated by commas and must all hold:
//!
//! | requirement | holds when |
//! |---|---|
//! | `k=v`, `k==v` | metadata `k` is `v` |
//! | `k!=v` | `k` is absent or not `v` |
//! | `k in (a,b)` | `k` is `a` or `b` |
//! | `k notin (a,b)` | `k` is absent or neither |
//! | `k` / `!k` | `k` is present / absent |
//! | `tag:t` / `!tag:t` | the instance has / lacks tag `t` |
//!
//! Keys and values are made of letters, digits and `. _ - /` (keys may not start
//! with `tag:`, which names a tag). An empty selector selects everything. A parse
//! error gives the byte offset where the text stops making sense.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    HasTag(String),
    LacksTag(String),
}

/// Where and why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SelectorError {
    /// Byte offset in the selector text.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid selector at position {}: {}",
            self.position, self.message
        )
    }
}

const TAG: &str = "tag:";

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser { text, pos: 0 };
        let mut requirements = Vec::new();
        parser.skip_spaces();
        if parser.at_end() {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(parser.requirement()?);
            parser.skip_spaces();
            if parser.at_end() {
                return Ok(Selector { requirements });
            }
            parser.expect(',', "expected ',' or the end")?;
        }
    }

    /// Whether an instance with this metadata and these tags is selected.
    pub fn matches(&self, metadata: &BTreeMap<String, String>, tags: &[String]) -> bool {
        let has_tag = |t: &String| tags.contains(t);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => metadata.get(k) == Some(v),
            Requirement::NotEquals(k, v) => metadata.get(k) != Some(v),
            Requirement::In(k, set) => metadata.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => metadata.get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => metadata.contains_key(k),
            Requirement::NotExists(k) => !metadata.contains_key(k),
            Requirement::HasTag(t) => has_tag(t),
            Requirement::LacksTag(t) => !has_tag(t),
        })
    }
}

struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

impl Parser<'_> {
    fn error<T>(&self, at: usize, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            position: at,
            message: message.into(),
        })
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.text.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token);
        if found {
            self.pos += token.len();
        }
        found
    }

    fn expect(&mut self, c: char, message: &str) -> Result<(), SelectorError> {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            self.error(self.pos, message)
        }
    }

    /// A key or value: letters, digits, `. _ - /` (and `:` for `tag:`).
    fn word(&mut self, what: &str) -> Result<String, SelectorError> {
        self.skip_spaces();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._-/:".contains(c)))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return self.error(self.pos, format!("expected {what}"));
        }
        let word = self.rest()[..len].to_string();
        self.pos += len;
        Ok(word)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_spaces();
        let negated = self.eat("!");
        let start = self.pos;
        let word = self.word("a key or tag:NAME")?;
        if let Some(tag) = word.strip_prefix(TAG) {
            if tag.is_empty() {
                return self.error(start + TAG.len(), "expected a tag name after 'tag:'");
            }
            let tag = tag.to_string();
            return Ok(if negated {
                Requirement::LacksTag(tag)
            } else {
                Requirement::HasTag(tag)
            });
        }
        if word.contains(':') {
            return self.error(start, "':' may only follow 'tag' in 'tag:NAME'");
        }
        if negated {
            return Ok(Requirement::NotExists(word));
        }
        self.skip_spaces();
        if self.eat("!=") {
            return Ok(Requirement::NotEquals(word, self.value()?));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Equals(word, self.value()?));
        }
        if self.at_end() || self.peek() == Some(',') {
            return Ok(Requirement::Exists(word));
        }
        let op_at = self.pos;
        match self.word("an operator")?.as_str() {
            "in" => Ok(Requirement::In(word, self.set()?)),
            "notin" => Ok(Requirement::NotIn(word, self.set()?)),
            _ => self.error(op_at, "expected '=', '!=', 'in', 'notin', ',' or the end"),
        }
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        let at = self.pos;
        let value = self.word("a value")?;
        if value.contains(':') {
            return self.error(at, "':' is not allowed in a value");
        }
        Ok(value)
    }

    /// `(a, b, ...)`, at least one value.
    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_spaces();
        self.expect('(', "expected '(' to open the set of values")?;
        let mut values = vec![self.value()?];
        loop {
            self.skip_spaces();
            if self.eat(")") {
                return Ok(values);
            }
            self.expect(',', "expected ',' or ')' in the set of values")?;
            values.push(self.value()?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Requirement::*;
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn parses_every_form() {
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            ("zone=us-east-1", vec![Equals(s("zone"), s("us-east-1"))]),
            ("zone == a", vec![Equals(s("zone"), s("a"))]),
            ("version!=1", vec![NotEquals(s("version"), s("1"))]),
            (
                "tier in (web,api)",
                vec![In(s("tier"), vec![s("web"), s("api")])],
            ),
            (
                "tier notin ( web , api )",
                vec![NotIn(s("tier"), vec![s("web"), s("api")])],
            ),
            ("canary", vec![Exists(s("canary"))]),
            ("!canary", vec![NotExists(s("canary"))]),
            (
                "tag:grpc, !tag:beta",
                vec![HasTag(s("grpc")), LacksTag(s("beta"))],
            ),
            (
                "app.kubernetes.io/name=web",
                vec![Equals(s("app.kubernetes.io/name"), s("web"))],
            ),
            (
                "zone=us-east-1,tier in (web,api),!canary,version!=1",
                vec![
                    Equals(s("zone"), s("us-east-1")),
                    In(s("tier"), vec![s("web"), s("api")]),
                    NotExists(s("canary")),
                    NotEquals(s("version"), s("1")),
                ],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Selector::parse(text).map(|s| s.requirements),
                Ok(want),
                "{text:?}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_offending_position() {
        let cases = [
            ("zone=", 5, "expected a value"),
            ("=a", 0, "expected a key or tag:NAME"),
            ("a=b,", 4, "expected a key or tag:NAME"),
            ("a=b c=d", 4, "expected ',' or the end"),
            ("tier in web", 8, "expected '(' to open the set of values"),
            ("tier in ()", 9, "expected a value"),
            (
                "tier in (a b)",
                11,
                "expected ',' or ')' in the set of values",
            ),
            ("tier in (a", 10, "expected ',' or ')' in the set of values"),
            (
                "tier is (a)",
                5,
                "expected '=', '!=', 'in', 'notin', ',' or the end",
            ),
            ("!a=b", 2, "expected ',' or the end"),
            ("tag:", 4, "expected a tag name after 'tag:'"),
            ("zone:x=1", 0, "':' may only follow 'tag' in 'tag:NAME'"),
            ("a=b:c", 2, "':' is not allowed in a value"),
            ("a=(b)", 2, "expected a value"),
        ];
        for (text, position, message) in cases {
            let got = Selector::parse(text).expect_err(text);
            assert_eq!(
                (got.position, got.message.as_str()),
                (position, message),
                "{text:?}"
            );
        }
        let shown = Selector::parse("a=b c").expect_err("error").to_string();
        assert_eq!(
            shown,
            "invalid selector at position 4: expected ',' or the end"
        );
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let metadata: BTreeMap<String, String> =
            [("zone", "us-east-1"), ("tier", "web"), ("version", "2")]
                .into_iter()
                .map(|(k, v)| (s(k), s(v)))
                .collect();
        let tags = vec![s("grpc")];
        let cases = [
            ("", true),
            ("zone=us-east-1", true),
            ("zone=eu", false),
            ("zone!=eu", true),
            ("missing!=x", true),
            ("tier in (web,api)", true),
            ("tier in (api)", false),
            ("missing in (x)", false),
            ("tier notin (api)", true),
            ("tier notin (web)", false),
            ("missing notin (x)", true),
            ("zone", true),
            ("missing", false),
            ("!missing", true),
            ("!zone", false),
            ("tag:grpc", true),
            ("tag:http", false),
            ("!tag:http", true),
            ("!tag:grpc", false),
            ("zone=us-east-1,tier in (web,api),!canary,version!=1", true),
            ("zone=us-east-1,version!=2", false),
        ];
        for (text, want) in cases {
            let selector = Selector::parse(text).expect(text);
            assert_eq!(selector.matches(&metadata, &tags), want, "{text:?}");
        }
    }
}
