//! `http.route` for requests whose server framework the agent cannot ask:
//! user-supplied route patterns first (`/api/users/{id}`), else a heuristic
//! that replaces the path segments that look like identifiers with `{id}`
//! (`/users/8812/orders/77` -> `/users/{id}/orders/{id}`), and ignore globs
//! (`/health*`) for requests that should give neither spans nor metrics.
//!
//! The heuristic looks at one segment at a time and errs on the side of
//! keeping words: a route that keeps an identifier costs one metric series
//! (and the cardinality budget catches a flood of them), while a route
//! that swallows a word merges endpoints that users want apart.

use std::borrow::Cow;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// What a heuristic-templated identifier segment becomes.
pub const ID_PLACEHOLDER: &str = "{id}";

/// Segments at least this long that mix letters and digits are tokens.
const TOKEN_MIN_LEN: usize = 16;
/// Segments longer than this are never words.
const WORD_MAX_LEN: usize = 64;
/// Digits needed for a mostly-numeric segment (`INV-2024-000123`,
/// `2024-01-15`) to count as an identifier; fewer keep names such as
/// `x86_64` or `v1.2`.
const NUMERIC_MIN_DIGITS: usize = 5;
/// Hex strings at least this long are ids even without a digit
/// (shorter all-letter ones may be words: `decade`, `facade`).
const HEX_LETTERS_ONLY_MIN_LEN: usize = 16;
/// Hex strings with a digit are ids from this length on (`5f2b7c9e`).
const HEX_MIN_LEN: usize = 8;

/// Invalid route settings.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A route pattern that cannot match any path.
    #[error("route pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as configured.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An ignore pattern that is not a valid glob.
    #[error("ignore pattern {pattern:?}")]
    Ignore {
        /// The pattern as configured.
        pattern: String,
        /// Cause.
        #[source]
        source: globset::Error,
    },
}

/// Route patterns, ignore globs and the heuristic, built once from the
/// configuration and shared by span building and metrics.
#[derive(Debug, Default)]
pub struct Routes {
    patterns: Vec<Pattern>,
    ignore: GlobSet,
}

/// `/api/users/{id}`: literal segments match themselves, `{name}` matches
/// any one non-empty segment.
#[derive(Debug)]
struct Pattern {
    text: String,
    segments: Vec<PatternSegment>,
}

#[derive(Debug)]
enum PatternSegment {
    Literal(String),
    Parameter,
}

impl Routes {
    /// Checks and compiles the patterns; the first matching pattern wins.
    pub fn new(patterns: &[String], ignore: &[String]) -> Result<Self, RouteError> {
        let patterns = patterns
            .iter()
            .map(|text| Pattern::parse(text))
            .collect::<Result<_, _>>()?;
        let mut globs = GlobSetBuilder::new();
        for pattern in ignore {
            let glob = Glob::new(pattern).map_err(|source| RouteError::Ignore {
                pattern: pattern.clone(),
                source,
            })?;
            globs.add(glob);
        }
        let ignore = globs.build().map_err(|source| RouteError::Ignore {
            pattern: ignore.join(", "),
            source,
        })?;
        Ok(Self { patterns, ignore })
    }

    /// True when requests for `path` should give neither a span nor a
    /// measurement (health checks, probes).
    pub fn is_ignored(&self, path: &str) -> bool {
        !self.ignore.is_empty() && self.ignore.is_match(path)
    }

    /// The route for a request path (without query): the first matching
    /// user pattern, else the heuristic template.
    pub fn route<'a>(&'a self, path: &'a str) -> Cow<'a, str> {
        match self.patterns.iter().find(|pattern| pattern.matches(path)) {
            Some(pattern) => Cow::Borrowed(&pattern.text),
            None => template(path),
        }
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, RouteError> {
        let invalid = |reason| RouteError::Pattern {
            pattern: text.to_owned(),
            reason,
        };
        if !text.starts_with('/') {
            return Err(invalid("must start with '/'"));
        }
        let segments = segments(text)
            .map(|segment| match segment.strip_prefix('{') {
                Some(rest)
                    if rest.len() > 1
                        && rest.ends_with('}')
                        && !rest[..rest.len() - 1].contains(['{', '}']) =>
                {
                    Ok(PatternSegment::Parameter)
                }
                _ if segment.contains(['{', '}']) => {
                    Err(invalid("a parameter is a whole segment, like {id}"))
                }
                _ => Ok(PatternSegment::Literal(segment.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut path_segments = segments(path);
        self.segments.iter().all(|expected| {
            path_segments.next().is_some_and(|segment| match expected {
                PatternSegment::Literal(literal) => literal == segment,
                PatternSegment::Parameter => !segment.is_empty(),
            })
        }) && path_segments.next().is_none()
    }
}

/// The segments after the leading '/', a trailing '/' ignored so that
/// `/users/7/` matches the pattern `/users/{id}`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').filter(move |_| !path.is_empty())
}

/// The heuristic alone: every identifier-looking segment becomes `{id}`;
/// the rest of the path, slashes included, is kept as it is.
pub fn template(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_identifier) {
        return Cow::Borrowed(path);
    }
    let templated: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if is_identifier(segment) {
                ID_PLACEHOLDER
            } else {
                segment
            }
        })
        .collect();
    Cow::Owned(templated.join("/"))
}

/// Whether one path segment is an identifier rather than a name.
fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let all_hex = bytes.iter().all(u8::is_ascii_hexdigit);
    // Numbers, e.g. `8812`.
    digits == bytes.len()
        // UUIDs, with or without dashes.
        || is_uuid(bytes)
        // Hex ids and hashes: `5f2b7c9e`, `507f1f77bcf86cd799439011`.
        || (all_hex && bytes.len() >= HEX_MIN_LEN && digits > 0)
        || (all_hex && bytes.len() >= HEX_LETTERS_ONLY_MIN_LEN)
        // Mostly digits with separators: dates, invoice numbers, coordinates.
        || (digits >= NUMERIC_MIN_DIGITS && digits >= letters)
        // E-mail addresses and user@host forms are user identifiers.
        || segment.contains('@')
        || bytes.len() > WORD_MAX_LEN
        || is_token(bytes, digits, letters)
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Long random tokens (session ids, signed links, base64 keys): made of
/// token characters and either mixing letters with several digits, or
/// switching between lower case, upper case and digits far more often than
/// camelCase words do (`aZ3xK9pQ...` vs `getUserProfileSettings`).
fn is_token(bytes: &[u8], digits: usize, letters: usize) -> bool {
    if bytes.len() < TOKEN_MIN_LEN
        || !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=~".contains(b))
    {
        return false;
    }
    if digits >= 2 && letters >= 2 {
        return true;
    }
    let class = |b: &u8| match b {
        b'a'..=b'z' => 1,
        b'A'..=b'Z' => 2,
        b'0'..=b'9' => 3,
        _ => 0,
    };
    let switches = bytes
        .windows(2)
        .filter(|pair| class(&pair[0]) != class(&pair[1]))
        .count();
    // Random mixed-case base64 switches class at ~60% of positions,
    // camelCase identifiers at ~25%.
    switches * 5 >= bytes.len() * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heuristic_on_real_world_paths() {
        // (path, expected route)
        let cases = [
            ("/users/8812/orders/77", "/users/{id}/orders/{id}"),
            ("/", "/"),
            ("/api/v1/users", "/api/v1/users"),
            ("/users/8812/", "/users/{id}/"),
            (
                "/api/v2/items/550e8400-e29b-41d4-a716-446655440000",
                "/api/v2/items/{id}",
            ),
            (
                "/items/550e8400e29b41d4a716446655440000/reviews",
                "/items/{id}/reviews",
            ),
            ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
            (
                "/repos/rust-lang/rust/commits/3f2a9c1bde",
                "/repos/rust-lang/rust/commits/{id}",
            ),
            ("/blobs/deadbeefcafebabe0123", "/blobs/{id}"),
            ("/reset/eyJhbGciOiJIUzI1NiJ9", "/reset/{id}"),
            ("/share/aZ3xK9pQ2mL7nB4v", "/share/{id}"),
            ("/share/qWeRtYuIoPaSdFgHjK", "/share/{id}"),
            ("/orders/AB12CD34EF56GH78", "/orders/{id}"),
            ("/invoices/INV-2024-000123", "/invoices/{id}"),
            ("/reports/2024-01-15/summary", "/reports/{id}/summary"),
            ("/geo/48.8566,2.3522", "/geo/{id}"),
            ("/users/bob@example.com/settings", "/users/{id}/settings"),
            (&format!("/t/{}", "x".repeat(65)), "/t/{id}"),
            // Words, versions and names stay.
            (
                "/download/linux/x86_64/latest",
                "/download/linux/x86_64/latest",
            ),
            ("/oauth2/callback", "/oauth2/callback"),
            ("/api/v1.2/status", "/api/v1.2/status"),
            (
                "/products/wireless-headphones",
                "/products/wireless-headphones",
            ),
            ("/api/getUserProfileSettings", "/api/getUserProfileSettings"),
            ("/api/getUser2FactorSettings", "/api/getUser2FactorSettings"),
            ("/static/css/main.css", "/static/css/main.css"),
            ("/about/facade", "/about/facade"),
            ("/health", "/health"),
            (
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration",
            ),
            ("/sessions/c0ffee", "/sessions/c0ffee"),
        ];
        for (path, expected) in cases {
            assert_eq!(template(path), expected, "{path}");
        }
    }

    #[test]
    fn unchanged_paths_are_not_copied() {
        assert!(matches!(template("/api/v1/users"), Cow::Borrowed(_)));
    }

    #[test]
    fn user_patterns_win_over_the_heuristic() {
        let routes = Routes::new(
            &[
                "/files/{name}".to_owned(),
                "/api/users/{id}/avatar".to_owned(),
                "/api/users/{user}".to_owned(),
            ],
            &[],
        )
        .unwrap();
        // (path, expected route)
        let cases = [
            ("/files/report-a.txt", "/files/{name}"),
            ("/files/report-a.txt/", "/files/{name}"),
            ("/api/users/42/avatar", "/api/users/{id}/avatar"),
            ("/api/users/alice", "/api/users/{user}"),
            // No pattern matches: heuristic.
            ("/files", "/files"),
            ("/files/a/b", "/files/a/b"),
            ("/api/users/42/orders/7", "/api/users/{id}/orders/{id}"),
            ("/api/users//", "/api/users//"),
        ];
        for (path, expected) in cases {
            assert_eq!(routes.route(path), expected, "{path}");
        }
    }

    #[test]
    fn ignore_globs_match_the_path() {
        let routes = Routes::new(&[], &["/health*".to_owned(), "/internal/**".to_owned()]).unwrap();
        assert!(routes.is_ignored("/health"));
        assert!(routes.is_ignored("/healthz"));
        assert!(routes.is_ignored("/internal/metrics/x"));
        assert!(!routes.is_ignored("/api/health"));
        assert!(!routes.is_ignored("/"));
        assert!(!Routes::default().is_ignored("/health"));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let error = Routes::new(&["api/{id}".to_owned()], &[]).unwrap_err();
        assert!(error.to_string().contains("must start with '/'"), "{error}");
        let error = Routes::new(&["/api/user-{id}".to_owned()], &[]).unwrap_err();
        assert!(error.to_string().contains("whole segment"), "{error}");
        let error = Routes::new(&[], &["/health[".to_owned()]).unwrap_err();
        assert!(matches!(error, RouteError::Ignore { .. }), "{error}");
    }
}
