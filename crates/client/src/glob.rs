//! Redis-style glob matching (the rules of `KEYS`, `SCAN MATCH` and `PSUBSCRIBE`), for
//! filtering device ids on the client side. Pure, so every rule is tested without a server.

/// One step of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters, the empty one included.
    Star,
    /// `?`: exactly one character.
    Any,
    /// `[...]`: one character in (or, negated, not in) the inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// Anything else, or a character escaped with `\`.
    Literal(char),
}

/// A compiled glob pattern.
///
/// The rules are Redis's (`stringmatchlen` in `util.c`):
///
/// - `*` matches any sequence of characters, including none;
/// - `?` matches exactly one character;
/// - `[abc]` matches one of the listed characters, `[^abc]` one that is not listed,
///   `[a-z]` one in the inclusive range (a reversed range such as `[z-a]` is read as
///   `[a-z]`);
/// - `\` makes the next character literal, inside brackets too (`\*`, `\[`, `\\`);
/// - everything else matches itself, case-sensitively.
///
/// Like Redis, a `[` without its `]` runs to the end of the pattern, `[]` matches nothing,
/// and a trailing lone `\` matches a `\`. Unlike Redis, which compares bytes, `?` and
/// brackets match one *character* (Unicode scalar value), so `dev-?` matches `dev-ü`.
///
/// ```
/// use metacache_client::Glob;
///
/// let g = Glob::new("dev-[12]*");
/// assert!(g.matches("dev-1"));
/// assert!(g.matches("dev-20"));
/// assert!(!g.matches("dev-3"));
/// assert!(Glob::new(r"50\%").matches("50%"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid pattern, as in Redis.
    ///
    /// ```
    /// use metacache_client::Glob;
    ///
    /// assert!(Glob::new("*").matches(""));
    /// assert!(!Glob::new("[").matches("[")); // an open class, not a literal `[`
    /// assert!(Glob::new(r"\[").matches("["));
    /// ```
    pub fn new(pattern: &str) -> Glob {
        Self::compile(pattern).0
    }

    /// Compiles `pattern`, refusing what is almost surely a typo although Redis would take
    /// it: a `[` class never closed (`h-[` matches nothing a user meant) and a lone `\` at
    /// the end. What the look-ups use, so a typo is a usage error, not an empty page.
    ///
    /// ```
    /// use metacache_client::Glob;
    ///
    /// assert!(Glob::parse("dev-[34]*").is_ok());
    /// assert!(Glob::parse("h-[").unwrap_err().contains("never closed"));
    /// assert!(Glob::parse(r"50\[").is_ok()); // an escaped bracket is a literal
    /// ```
    pub fn parse(pattern: &str) -> Result<Glob, String> {
        let (glob, problem) = Self::compile(pattern);
        match problem {
            None => Ok(glob),
            Some(problem) => Err(format!("pattern {pattern:?}: {problem}")),
        }
    }

    /// The compiled pattern, and what a strict reading refuses in it.
    fn compile(pattern: &str) -> (Glob, Option<String>) {
        let mut problem = None;
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                '[' => {
                    let (token, next, closed) = class(&chars, i + 1);
                    if !closed && problem.is_none() {
                        problem = Some(format!(
                            "the [ at character {} is never closed (a literal [ is written \\[)",
                            i + 1
                        ));
                    }
                    tokens.push(token);
                    i = next;
                }
                '\\' if i + 1 < chars.len() => {
                    tokens.push(Token::Literal(chars[i + 1]));
                    i += 2;
                }
                '\\' => {
                    problem.get_or_insert_with(|| {
                        "it ends with a lone \\ (a literal \\ is written \\\\)".to_owned()
                    });
                    tokens.push(Token::Literal('\\'));
                    i += 1;
                }
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        (Glob { tokens }, problem)
    }

    /// True when the pattern matches the whole of `text`.
    ///
    /// ```
    /// use metacache_client::Glob;
    ///
    /// assert!(Glob::new("d?v-[^0-4]").matches("dev-7"));
    /// assert!(!Glob::new("d?v-[^0-4]").matches("dev-3"));
    /// ```
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0, 0);
        // Where to resume after the latest `*`: (pattern index after it, text index).
        let mut resume: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Star) => {
                    resume = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(token) if one(token, text[t]) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the latest star swallow one more character, or fail.
            match resume {
                Some((after_star, from)) => {
                    p = after_star;
                    t = from + 1;
                    resume = Some((after_star, from + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|token| *token == Token::Star)
    }

    /// True when the pattern has no special characters left, i.e. it matches exactly one
    /// string.
    ///
    /// ```
    /// use metacache_client::Glob;
    ///
    /// assert!(Glob::new(r"dev-42\*").is_literal());
    /// assert!(!Glob::new("dev-4?").is_literal());
    /// ```
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }
}

/// Whether a single-character token matches `c`.
fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Star => true,
        Token::Any => true,
        Token::Literal(l) => *l == c,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
    }
}

/// Parses a bracket class whose body starts at `chars[i]`; returns it and the index after
/// it. Follows Redis: `]` ends the class even first, `\` escapes, `x-y` is a range when a
/// character follows the `-` (even a `]`), and the pattern's end closes an open class.
/// A `[...]` class from just after its `[`: the token, where it ends, and whether a `]`
/// closed it.
fn class(chars: &[char], mut i: usize) -> (Token, usize, bool) {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut closed = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            ranges.push((chars[i + 1], chars[i + 1]));
            i += 2;
        } else if c == ']' {
            i += 1;
            closed = true;
            break;
        } else if i + 2 < chars.len() && chars[i + 1] == '-' {
            let (a, b) = (c, chars[i + 2]);
            ranges.push((a.min(b), a.max(b)));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    (Token::Class { negated, ranges }, i, closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    #[test]
    fn a_strict_parse_refuses_what_is_surely_a_typo() {
        for bad in ["h-[", "[abc", "a[^", "x\\", "[a\\]"] {
            assert!(Glob::parse(bad).is_err(), "{bad}");
        }
        for good in ["h-\\[", "[abc]", "*", "", "a\\\\", "[]]"] {
            assert!(Glob::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn star_and_question_mark() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("dev-*", "dev-"));
        assert!(m("dev-*", "dev-42"));
        assert!(!m("dev-*", "de-42"));
        assert!(m("*-42", "dev-42"));
        assert!(m("d*v*2", "dev-42"));
        assert!(!m("d*v*3", "dev-42"));
        assert!(m("dev-??", "dev-42"));
        assert!(!m("dev-??", "dev-4"));
        assert!(!m("dev-?", "dev-42"));
        assert!(m("**a**", "bab"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("", ""));
        assert!(!m("", "x"));
    }

    #[test]
    fn bracket_classes() {
        assert!(m("dev-[12]*", "dev-1"));
        assert!(m("dev-[12]*", "dev-2x"));
        assert!(!m("dev-[12]*", "dev-3"));
        assert!(!m("dev-[12]*", "dev-"));
        assert!(m("[a-c]", "b"));
        assert!(m("[c-a]", "b"), "a reversed range is swapped, as in Redis");
        assert!(!m("[a-c]", "d"));
        assert!(m("[^a-c]", "d"));
        assert!(!m("[^a-c]", "a"));
        assert!(
            m("[^]", "x"),
            "an empty negated class matches any one character"
        );
        assert!(!m("[]", "x"), "an empty class matches nothing");
        assert!(!m("[]", ""));
        assert!(m("x[a-]", "x]"), "`a-]` is the range a..] in Redis");
        assert!(
            m("[ab", "a"),
            "an open class runs to the end of the pattern"
        );
        assert!(m(r"[\]]", "]"));
        assert!(m(r"[\-]", "-"));
        assert!(m("[*?]", "*"));
        assert!(!m("[*?]", "x"));
    }

    #[test]
    fn escapes() {
        assert!(m(r"\*", "*"));
        assert!(!m(r"\*", "x"));
        assert!(m(r"a\?", "a?"));
        assert!(!m(r"a\?", "ab"));
        assert!(m(r"\[x]", "[x]"));
        assert!(m(r"\\", r"\"));
        assert!(m(r"a\", r"a\"), "a trailing backslash is literal");
        assert!(m(r"\a", "a"), "an escaped ordinary character is itself");
    }

    #[test]
    fn unicode_and_spaces_are_characters() {
        assert!(m("dev ?", "dev ü"));
        assert!(m("*ü*", "gerät über"));
        assert!(m("[ä-ü]", "ö"));
        assert!(m("sensor #* : x", "sensor #1 : x"));
        assert!(!m("DEV-*", "dev-1"), "case-sensitive");
    }

    #[test]
    fn literal_patterns() {
        assert!(Glob::new("abc").is_literal());
        assert!(Glob::new(r"a\*").is_literal());
        assert!(!Glob::new("a*").is_literal());
        assert!(!Glob::new("[a]").is_literal());
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(200);
        assert!(!m(&pattern, &text));
    }
}
