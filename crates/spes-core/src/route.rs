//! Matching a model's classification to a `switch` route (pure).
//!
//! The reference routes to the first route whose name is a substring of the
//! answer (`route_name.lower() in classification`), so `bug` matches
//! "debugging", and the route declared first wins when several match. Here:
//! Both the answer and the route names are read as lowercased words (runs
//! of letters and digits; `_`, `-`, spaces, quotes and punctuation separate
//! them, so `bug_fix`, "Bug fix." and `` `bug-fix` `` are the same words).
//! 1. **Exact**: the answer's words are exactly a route name's words.
//! 2. **Word**: otherwise a route name's words occur in the answer as
//!    consecutive whole words. When several routes do, the one with more
//!    words wins (`bug_fix` over `bug`), then the longer name, then the one
//!    that occurs first.
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

/// Lowercased words: runs of letters and digits (`_`, `-`, spaces and
/// punctuation all separate words).
fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Matches `answer` to one of `routes` (names as declared); see the module docs.
pub fn match_route<'r>(answer: &str, routes: impl IntoIterator<Item = &'r str>) -> RouteMatch {
    let routes: Vec<(&str, Vec<String>)> = routes
        .into_iter()
        .map(|r| (r, words(r)))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let said = words(answer);
    if let Some((r, _)) = routes.iter().find(|(_, w)| *w == said) {
        return RouteMatch::Exact((*r).to_owned());
    }
    // (words in the name, characters in the name, position) of the best so far.
    let mut best: Option<(usize, usize, usize, &str)> = None;
    for (r, w) in &routes {
        let Some(pos) = said.windows(w.len()).position(|win| win == w.as_slice()) else {
            continue;
        };
        let chars: usize = w.iter().map(String::len).sum();
        let better = match best {
            None => true,
            Some((n, c, p, _)) => {
                (w.len(), chars, std::cmp::Reverse(pos)) > (n, c, std::cmp::Reverse(p))
            }
        };
        if better {
            best = Some((w.len(), chars, pos, r));
        }
    }
    best.map_or(RouteMatch::None, |(_, _, _, r)| {
        RouteMatch::Word(r.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: [&str; 3] = ["bug", "bug_fix", "Feature"];

    #[test]
    fn exact_match_ignores_case_quotes_and_punctuation() {
        assert_eq!(match_route("  BUG\n", R), RouteMatch::Exact("bug".into()));
        assert_eq!(
            match_route("`feature`.", R),
            RouteMatch::Exact("Feature".into())
        );
        assert_eq!(
            match_route("bug fix", R),
            RouteMatch::Exact("bug_fix".into())
        );
        assert_eq!(
            match_route("Bug-Fix!", R),
            RouteMatch::Exact("bug_fix".into())
        );
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
