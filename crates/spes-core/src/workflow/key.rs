//! Step keys: the path of step names to a step (`route/risky/deep_review`),
//! and the keys of what a step records beside its own entry (`KEY#when`,
//! `KEY#repair1`, `KEY/map[3]#result`).
//!
//! Keys are stable across runs: they key the journal, so a stored run
//! replays only while their text stays byte for byte what it was. Every
//! form is built here (and pinned by the tests below); parsing a key back
//! goes through here too.
//!
//! | form | key |
//! |---|---|
//! | a child step | `KEY/NAME` (`NAME` at the top) |
//! | map item `I` | `KEY/map[I]` |
//! | retry attempt `N` (N ≥ 2) | `KEY#attemptN` |
//! | repair `N` of an answer (N ≥ 1) | `KEY#repairN` |
//! | alternative `N` | `KEY#fallbackN`, `KEY#degradeN` |
//! | an item's or a handed-over step's result | `KEY#result` |
//! | the context a map's items see | `KEY#ctx` |
//! | a decision or record of the step | `KEY#TAG` (`when`, `if1`, `taken`, `served`, `opened`, ...) |

use std::fmt;

/// The key of one step, or of one thing a step records.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepKey(String);

impl StepKey {
    /// A key as written (the empty key is the root, above the top-level steps).
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// `NAME` under `prefix`: `PREFIX/NAME`, or `NAME` when `prefix` is
    /// the root (empty).
    #[must_use]
    pub fn join(prefix: &str, name: &str) -> Self {
        if prefix.is_empty() {
            Self(name.to_owned())
        } else {
            let mut k = String::with_capacity(prefix.len() + 1 + name.len());
            k.push_str(prefix);
            k.push('/');
            k.push_str(name);
            Self(k)
        }
    }

    /// The key as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as a `String`.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    fn suffixed(&self, tag: fmt::Arguments<'_>) -> Self {
        Self(format!("{}#{tag}", self.0))
    }

    /// A child step (or a path segment such as an arm, a route, `timeout`,
    /// `attempt2`, `review1`): `KEY/NAME`.
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        Self::join(&self.0, name)
    }

    /// Item `index` of a map (from 0): `KEY/map[INDEX]`.
    #[must_use]
    pub fn item(&self, index: usize) -> Self {
        Self(format!("{}/map[{index}]", self.0))
    }

    /// What every item key of this map starts with: `KEY/map[`.
    #[must_use]
    pub fn items_prefix(&self) -> String {
        format!("{}/map[", self.0)
    }

    /// Attempt `n` (from 1) of a step under a retry policy: the key itself
    /// for the first, then `KEY#attemptN`.
    #[must_use]
    pub fn attempt(&self, n: u32) -> Self {
        if n <= 1 {
            self.clone()
        } else {
            self.suffixed(format_args!("attempt{n}"))
        }
    }

    /// Repair `n` of an llm answer: the key itself for the first call
    /// (`n` = 0), then `KEY#repairN`.
    #[must_use]
    pub fn repair(&self, n: u32) -> Self {
        if n == 0 {
            self.clone()
        } else {
            self.suffixed(format_args!("repair{n}"))
        }
    }

    /// Alternative `n` (from 1) of a policy `field` (`fallback`,
    /// `degrade`): `KEY#fallbackN`. Also the name of an alternative step
    /// (`summary#fallback2`), under the step's parent.
    #[must_use]
    pub fn slot(&self, field: &str, n: usize) -> Self {
        self.suffixed(format_args!("{field}{n}"))
    }

    /// The result of a map item or of a step handed to a worker: `KEY#result`.
    #[must_use]
    pub fn result(&self) -> Self {
        self.tag("result")
    }

    /// The context a map's items see, recorded by the map: `KEY#ctx`.
    #[must_use]
    pub fn ctx(&self) -> Self {
        self.tag("ctx")
    }

    /// A decision or record the step keeps beside its own entry:
    /// `KEY#TAG` (`when`, `if1`, `taken`, `served`, `opened`, `failed`,
    /// `gathered`, `start`, `timing`, `error`).
    #[must_use]
    pub fn tag(&self, tag: &str) -> Self {
        self.suffixed(format_args!("{tag}"))
    }

    /// The prefixes of every entry at or under this step other than its
    /// own: `KEY/` (its children) and `KEY#` (its records).
    #[must_use]
    pub fn entry_prefixes(&self) -> [String; 2] {
        [format!("{}/", self.0), format!("{}#", self.0)]
    }

    /// The key of the step this one is a child of (`a/b` for `a/b/c`);
    /// `None` at the top.
    #[must_use]
    pub fn parent(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(p, _)| p)
    }

    /// The last segment of the path (`c#when` for `a/b/c#when`).
    #[must_use]
    pub fn last(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, n)| n)
    }

    /// For an item key `MAP/map[I]`: `MAP` and `I`.
    #[must_use]
    pub fn item_of(&self) -> Option<(&str, usize)> {
        Self::split_item(&self.0)
    }

    /// For an item key `MAP/map[I]`: the index `I`.
    #[must_use]
    pub fn item_index(&self) -> Option<usize> {
        self.item_of().map(|(_, i)| i)
    }

    /// [`Self::item_of`] on a key held as text.
    #[must_use]
    pub fn split_item(key: &str) -> Option<(&str, usize)> {
        let (map, last) = key.rsplit_once('/')?;
        let i = last.strip_prefix("map[")?.strip_suffix(']')?;
        if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((map, i.parse().ok()?))
    }

    /// The key a provider sees for a call: retries and repairs of one call
    /// look the same (`summary#attempt3#repair1` → `summary`); alternatives
    /// keep their suffix (`summary#fallback1`).
    #[must_use]
    pub fn call_key(key: &str) -> &str {
        let mut key = key;
        for suffix in ["#repair", "#attempt"] {
            if let Some((base, n)) = key.rsplit_once(suffix)
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
            {
                key = base;
            }
        }
        key
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for StepKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StepKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StepKey {
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl From<String> for StepKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl From<StepKey> for String {
    fn from(key: StepKey) -> Self {
        key.0
    }
}

impl PartialEq<str> for StepKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StepKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::StepKey;

    fn k(s: &str) -> StepKey {
        StepKey::new(s)
    }

    /// The journal holds these strings: a change here breaks the replay
    /// of every stored run.
    #[test]
    fn journal_keys_are_pinned_byte_for_byte() {
        let root = StepKey::default();
        let cases: Vec<(StepKey, &str)> = vec![
            (root.child("plan"), "plan"),
            (
                root.child("route").child("risky").child("deep_review"),
                "route/risky/deep_review",
            ),
            (StepKey::join("", "a"), "a"),
            (StepKey::join("a/b", "c"), "a/b/c"),
            (k("gather").item(17), "gather/map[17]"),
            (
                k("gather").item(17).child("summarize").attempt(2),
                "gather/map[17]/summarize#attempt2",
            ),
            (k("gather").item(3).result(), "gather/map[3]#result"),
            (k("gather").item(3).tag("error"), "gather/map[3]#error"),
            (k("gather").ctx(), "gather#ctx"),
            (k("sub").result(), "sub#result"),
            (k("summary").attempt(0), "summary"),
            (k("summary").attempt(1), "summary"),
            (k("summary").attempt(3), "summary#attempt3"),
            (k("summary").repair(0), "summary"),
            (k("summary").repair(1), "summary#repair1"),
            (
                k("summary").attempt(2).repair(2),
                "summary#attempt2#repair2",
            ),
            (k("summary").slot("fallback", 2), "summary#fallback2"),
            (k("summary").slot("degrade", 1), "summary#degrade1"),
            (k("summary").tag("served"), "summary#served"),
            (k("s").tag("when"), "s#when"),
            (k("s").attempt(2).tag("validate"), "s#attempt2#validate"),
            (k("route").tag("if1"), "route#if1"),
            (k("route").tag("taken"), "route#taken"),
            (k("gate").tag("opened"), "gate#opened"),
            (k("saga").tag("failed"), "saga#failed"),
            (k("sg").tag("gathered"), "sg#gathered"),
            (k("sg").tag("start"), "sg#start"),
            (k("fo").tag("timing"), "fo#timing"),
            (k("fo").child("w1").tag("error"), "fo/w1#error"),
            (k("gate").child("review2"), "gate/review2"),
            (
                k("qg").child("attempt2").child("judge"),
                "qg/attempt2/judge",
            ),
            (k("db").child("round1").child("a"), "db/round1/a"),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_str(), want);
        }
        assert_eq!(k("gather").items_prefix(), "gather/map[");
        assert_eq!(
            k("gather/map[2]").entry_prefixes(),
            ["gather/map[2]/".to_owned(), "gather/map[2]#".to_owned()]
        );
    }

    #[test]
    fn keys_parse_back() {
        let item = k("a/b").item(12);
        assert_eq!(item.item_of(), Some(("a/b", 12)));
        assert_eq!(item.item_index(), Some(12));
        assert_eq!(item.parent(), Some("a/b"));
        assert_eq!(item.last(), "map[12]");
        assert_eq!(k("a").parent(), None);
        assert_eq!(k("a").last(), "a");
        assert_eq!(k("a/b/c#when").parent(), Some("a/b"));
        assert_eq!(k("a/b/c#when").last(), "c#when");
        for not_item in ["a", "a/map[]", "a/map[x]", "a/map[1", "a/map[-1]", "map[1]"] {
            assert_eq!(StepKey::split_item(not_item), None, "{not_item}");
        }
        assert_eq!(StepKey::split_item("a/map[1]/b"), None);
        assert_eq!(StepKey::split_item("x/map[007]"), Some(("x", 7)));
    }

    #[test]
    fn retries_and_repairs_are_one_call_to_a_provider() {
        let key = k("s").item(2).child("summary");
        for (journal, call) in [
            (key.clone(), key.as_str()),
            (key.attempt(3), key.as_str()),
            (key.repair(2), key.as_str()),
            (key.attempt(2).repair(1), key.as_str()),
            (key.slot("fallback", 1), "s/map[2]/summary#fallback1"),
            (
                key.slot("fallback", 1).attempt(2),
                "s/map[2]/summary#fallback1",
            ),
        ] {
            assert_eq!(StepKey::call_key(&journal), call, "{journal}");
        }
        // Only a number after the suffix counts.
        assert_eq!(StepKey::call_key("s#attempt"), "s#attempt");
        assert_eq!(StepKey::call_key("s#attemptx"), "s#attemptx");
    }

    #[test]
    fn a_key_is_its_text() {
        let key = k("a").child("b");
        assert_eq!(key.to_string(), "a/b");
        assert_eq!(&*key, "a/b");
        assert!(key == "a/b");
        assert_eq!(String::from(key.clone()), "a/b");
        assert_eq!(StepKey::from("a/b"), key);
        assert_eq!(key.into_string(), "a/b");
    }
}
