//! `LIKE` / `ILIKE` as Zero evaluates them (`zql/src/builder/like.ts`, and on the server SQLite
//! with `case_sensitive_like = ON`, `ESCAPE '\'` and ICU `lower()`):
//!
//! * `%` matches any sequence of characters (including none and newlines), `_` exactly one
//!   character; `\` makes the next character literal. A pattern ending in a lone `\` is invalid
//!   (Zero throws "LIKE pattern must not end with escape character"): validation rejects it.
//! * `LIKE` is case-sensitive; `ILIKE` lower-cases both sides (Unicode lower case) first.
//! * Matching is by Unicode scalar value, as SQLite does. Zero's in-memory matcher (a JS regular
//!   expression without the `u` flag) matches `_` against one UTF-16 code unit, so for
//!   characters outside the BMP a single `_` matches here and in SQLite but not in Zero's
//!   client-side matcher.
//!
//! SQLite's own `LIKE` is case-insensitive for ASCII and has no default escape, so the engine
//! registers `zcache_like(value, pattern)` and `zcache_ilike(value, pattern)` on its connection.
//! Both return NULL when either argument is NULL (so `NOT zcache_like(NULL, …)` is false, as
//! Zero's `NOT LIKE` is for NULL).

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Any,
    One,
    Lit(char),
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct LikePattern {
    toks: Vec<Tok>,
    case_insensitive: bool,
}

/// Why a pattern is rejected, or `None`.
#[must_use]
pub fn pattern_problem(pattern: &str) -> Option<&'static str> {
    let mut escaped = false;
    for c in pattern.chars() {
        escaped = !escaped && c == '\\';
    }
    escaped.then_some("LIKE pattern must not end with escape character")
}

impl LikePattern {
    #[must_use]
    pub fn new(pattern: &str, case_insensitive: bool) -> LikePattern {
        let lowered;
        let source = if case_insensitive {
            lowered = pattern.to_lowercase();
            lowered.as_str()
        } else {
            pattern
        };
        let mut toks = Vec::with_capacity(source.len());
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '%' => {
                    // Consecutive `%` are one.
                    if toks.last() == Some(&Tok::Any) {
                        continue;
                    }
                    Tok::Any
                }
                '_' => Tok::One,
                '\\' => match chars.next() {
                    Some(next) => Tok::Lit(next),
                    // Invalid (see `pattern_problem`); such a pattern matches nothing.
                    None => {
                        return LikePattern {
                            toks: vec![Tok::Lit('\\'), Tok::One],
                            case_insensitive,
                        }
                    }
                },
                other => Tok::Lit(other),
            });
        }
        LikePattern { toks, case_insensitive }
    }

    #[must_use]
    pub fn matches(&self, value: &str) -> bool {
        if self.case_insensitive {
            let lowered = value.to_lowercase();
            wildcard(&lowered, &self.toks)
        } else {
            wildcard(value, &self.toks)
        }
    }
}

/// Greedy matching with backtracking to the last `%`: O(len(value) · len(pattern)) at worst.
fn wildcard(value: &str, toks: &[Tok]) -> bool {
    let v: Vec<char> = value.chars().collect();
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < v.len() {
        match toks.get(j) {
            Some(Tok::One) => {
                i += 1;
                j += 1;
            }
            Some(Tok::Lit(c)) if *c == v[i] => {
                i += 1;
                j += 1;
            }
            Some(Tok::Any) => {
                star = Some((j, i));
                j += 1;
            }
            _ => match star {
                Some((sj, si)) => {
                    j = sj + 1;
                    i = si + 1;
                    star = Some((sj, si + 1));
                }
                None => return false,
            },
        }
    }
    toks[j..].iter().all(|t| *t == Tok::Any)
}

/// `value LIKE pattern` (`case_insensitive`: `ILIKE`).
#[must_use]
pub fn like(value: &str, pattern: &str, case_insensitive: bool) -> bool {
    LikePattern::new(pattern, case_insensitive).matches(value)
}

/// Registers `zcache_like` and `zcache_ilike` on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for (name, ci) in [("zcache_like", false), ("zcache_ilike", true)] {
        conn.create_scalar_function(
            name,
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS,
            move |ctx| {
                let value = match ctx.get_raw(0) {
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Integer(i) => i.to_string(),
                    ValueRef::Real(f) => f.to_string(),
                    ValueRef::Null | ValueRef::Blob(_) => return Ok(None),
                };
                if matches!(ctx.get_raw(1), ValueRef::Null) {
                    return Ok(None);
                }
                let pattern = ctx.get_or_create_aux(1, |v| -> Result<LikePattern, String> {
                    let text = v.as_str().map_err(|e| e.to_string())?;
                    Ok(LikePattern::new(text, ci))
                })?;
                Ok(Some(pattern.matches(&value)))
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(like("bob", "b%", false));
        assert!(like("b", "b%", false));
        assert!(!like("ab", "b%", false));
        assert!(like("abc", "a_c", false));
        assert!(!like("ac", "a_c", false));
        assert!(like("abcbc", "%bc", false));
        assert!(like("abxbc", "a%b_", false));
        assert!(like("", "%", false));
        assert!(!like("", "_", false));
        assert!(like("aaa", "%%a%%", false));
        assert!(like("mississippi", "m%iss%ppi", false));
        assert!(!like("mississippi", "m%iss%ppx", false));
    }

    #[test]
    fn newlines_are_ordinary_characters() {
        // Zero uses the `s` flag: `%` and `_` match newlines; anchors cover the whole string.
        assert!(like("a\nb", "a%b", false));
        assert!(like("a\nb", "a_b", false));
        assert!(!like("fooa\nbar", "foo_", false));
    }

    #[test]
    fn case() {
        assert!(!like("Bob", "bob", false));
        assert!(like("Bob", "bob", true));
        assert!(like("BÖB", "b%ö_", true));
        assert!(like("ÉCOLE", "école", true));
        assert!(!like("école", "ÉCOLE", false));
    }

    #[test]
    fn escapes() {
        assert!(like("50%", "50\\%", false));
        assert!(!like("500", "50\\%", false));
        assert!(like("a_b", "a\\_b", false));
        assert!(!like("axb", "a\\_b", false));
        assert!(like("a\\b", "a\\\\b", false));
        // An escaped ordinary character is itself; regex specials are plain characters.
        assert!(like("ab", "\\ab", false));
        assert!(like("a.b", "a.b", false));
        assert!(!like("axb", "a.b", false));
        assert!(like("(x)*", "(x)*", false));
    }

    #[test]
    fn trailing_escape_is_invalid() {
        assert!(pattern_problem("abc\\").is_some());
        assert!(pattern_problem("abc\\\\").is_none());
        assert!(pattern_problem("a\\%").is_none());
        assert!(!like("abc\\", "abc\\", false));
    }

    #[test]
    fn one_character_is_one_scalar_value() {
        assert!(like("a😀b", "a_b", false));
        assert!(!like("a😀b", "a__b", false));
    }

    #[test]
    fn sql_functions() {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn).unwrap();
        let q = |sql: &str| -> Option<bool> { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(q("SELECT zcache_like('Bob', 'B%')"), Some(true));
        assert_eq!(q("SELECT zcache_like('bob', 'B%')"), Some(false));
        assert_eq!(q("SELECT zcache_ilike('bob', 'B%')"), Some(true));
        assert_eq!(q("SELECT zcache_like(NULL, 'B%')"), None);
        assert_eq!(q("SELECT NOT zcache_like(NULL, 'B%')"), None);
        assert_eq!(q("SELECT zcache_like('50%', '50\\%')"), Some(true));
        let n: i64 = conn
            .query_row(
                "WITH t(x) AS (VALUES ('apple'), ('Avocado'), ('banana'), (NULL)) SELECT count(*) FROM t WHERE zcache_ilike(x, 'a%')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
}
