//! Matching a model's classification to a `switch` route (pure).
//!
//! The reference routes to the first route whose name is a substring of the
//! answer (`route_name.lower() in classification`), so `bug` matches
//! "debugging", and the route declared first wins when several match. Here:
//! 1. **Exact**: the answer, lowercased, trimmed of whitespace, quotes,
//!    backticks and trailing punctuation, with spaces and hyphens read as
//!    `_`, equals a route name (case-insensitive).
//! 2. **Word**: otherwise a route name occurs in the answer as a whole word
//!    (word characters are letters, digits and `_`; spaces and hyphens in the
//!    answer also read as `_`). When several do, the longest name wins, then
//!    the one that occurs first.
//! 3. Otherwise no route matched (the engine takes `default`).
//!
//! ```
//! use spes_core::route::{match_route, RouteMatch};
//! let routes = ["bug", "feature"];
//! assert_eq!(match_route("Bug.", routes), RouteMatch::Exact("bug".into()));
//! assert_eq!(match_route("This is a feature request", routes), RouteMatch::Word("feature".into()));
//! assert_eq!(match_route("debugging", routes), RouteMatch::None);
//! ```

/// How a classification matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// The whole answer is the route's name.
    Exact(String),
    /// The route's name is a word in the answer.
    Word(String),
    /// No route.
    None,
}

impl RouteMatch {
    /// The route, if any.
    #[must_use]
    pub fn route(&self) -> Option<&str> {
        match self {
            Self::Exact(r) | Self::Word(r) => Some(r),
            Self::None => None,
        }
    }

    /// `exact`, `word` or `none`.
    #[must_use]
    pub fn how(&self) -> &'static str {
        match self {
            Self::Exact(_) => "exact",
            Self::Word(_) => "word",
            Self::None => "none",
        }
    }
}

fn normalize(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect()
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Matches `answer` to one of `routes` (names as declared); see the module docs.
pub fn match_route<'r>(answer: &str, routes: impl IntoIterator<Item = &'r str>) -> RouteMatch {
    let routes: Vec<&str> = routes.into_iter().collect();
    let trimmed = answer
        .trim()
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '*'))
        .trim_end_matches(['.', '!', ':', ';', ','])
        .trim();
    let label = normalize(trimmed);
    if let Some(r) = routes.iter().find(|r| normalize(r) == label) {
        return RouteMatch::Exact((*r).to_owned());
    }
    let text = normalize(answer);
    let mut best: Option<(usize, usize, &str)> = None; // (name len, position, route)
    for r in &routes {
        let name = normalize(r);
        if name.is_empty() {
            continue;
        }
        let mut from = 0;
        while let Some(pos) = text[from..].find(&name).map(|p| p + from) {
            let before = text[..pos].chars().next_back();
            let after = text[pos + name.len()..].chars().next();
            if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
                let better = match best {
                    None => true,
                    Some((len, at, _)) => name.len() > len || (name.len() == len && pos < at),
                };
                if better {
                    best = Some((name.len(), pos, r));
                }
                break;
            }
            from = pos + name.len().max(1);
        }
    }
    best.map_or(RouteMatch::None, |(_, _, r)| RouteMatch::Word(r.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: [&str; 3] = ["bug", "bug_fix", "Feature"];

    #[test]
    fn exact_match_ignores_case_quotes_and_punctuation() {
        assert_eq!(match_route("  BUG\n", R), RouteMatch::Exact("bug".into()));
        assert_eq!(match_route("`feature`.", R), RouteMatch::Exact("Feature".into()));
        assert_eq!(match_route("bug fix", R), RouteMatch::Exact("bug_fix".into()));
        assert_eq!(match_route("Bug-Fix!", R), RouteMatch::Exact("bug_fix".into()));
    }

    #[test]
    fn word_match_needs_whole_words_and_prefers_the_longest() {
        assert_eq!(match_route("debugging session", R), RouteMatch::None);
        assert_eq!(
            match_route("Classification: bug", R),
            RouteMatch::Word("bug".into())
        );
        // Both `bug` and `bug_fix` occur as words: the longer, more specific one.
        assert_eq!(
            match_route("a bug, so a bug fix", R),
            RouteMatch::Word("bug_fix".into())
        );
        // Equal length: the first to occur.
        assert_eq!(
            match_route("idea, or a task?", ["task", "idea"]),
            RouteMatch::Word("idea".into())
        );
        assert_eq!(match_route("", R), RouteMatch::None);
        assert_eq!(match_route("features", R), RouteMatch::None);
    }
}
