//! SQL text as the agent may export it: [`sanitize`] replaces every literal
//! with `?` and [`summarize`] reads the operation and its one table, for
//! PostgreSQL and MySQL/MariaDB alike.
//!
//! A small tokenizer rather than a SQL parser crate (sqlparser and the like):
//! the agent often sees only a prefix of a statement (the kernel copies a
//! bounded head of each call), in any dialect and with driver placeholders,
//! and must never fail open. A tokenizer handles cut input, unknown syntax
//! and both dialects' quoting, and can only ever output keywords,
//! identifiers, punctuation and `?`.

/// Which quoting rules the statement follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `"..."` quotes identifiers; `E'..'` and `$tag$..$tag$` strings.
    Postgres,
    /// `"..."` is a string (the default `sql_mode`), `` `..` `` quotes
    /// identifiers, backslash escapes inside strings.
    MySql,
}

/// One token; literals are already gone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// A word: keyword or bare identifier.
    Word(&'a str),
    /// A quoted identifier, quotes included.
    Quoted(&'a str),
    /// A string, number, or other literal, shown as `?`.
    Literal,
    /// A driver placeholder (`$1`, `?`, `:name`), kept as written.
    Placeholder(&'a str),
    /// Any other character run (operators, punctuation).
    Punct(&'a str),
}

/// Replaces every literal in `sql` (strings, numbers, hex and bit strings,
/// dollar-quoted bodies) with `?`, drops comments, collapses runs of
/// whitespace and `IN (?, ?, ...)` lists to `IN (?)`. Placeholders the
/// driver sent (`$1`, `?`) stay. A statement cut inside a literal ends with
/// that literal's `?`: nothing of a value survives.
pub fn sanitize(sql: &str, dialect: Dialect) -> String {
    let spaced_tokens = tokenize(sql, dialect);
    let tokens: Vec<Token<'_>> = spaced_tokens.iter().map(|t| t.0.clone()).collect();
    let mut out = String::with_capacity(sql.len().min(1024));
    let mut i = 0;
    while i < tokens.len() {
        let spaced = spaced_tokens[i].1 && !out.is_empty();
        if let Some(end) = literal_list_after_in(&tokens, i) {
            push_token(&mut out, &tokens[i], spaced);
            push_token(&mut out, &Token::Punct("("), spaced_tokens[i + 1].1);
            out.push_str("?)");
            i = end;
            continue;
        }
        push_token(&mut out, &tokens[i], spaced);
        i += 1;
    }
    out
}

/// `IN ( lit , lit ... )` starting at `i`: the index after the `)`.
fn literal_list_after_in(tokens: &[Token<'_>], i: usize) -> Option<usize> {
    if !matches!(tokens.get(i), Some(Token::Word(w)) if w.eq_ignore_ascii_case("in")) {
        return None;
    }
    if tokens.get(i + 1) != Some(&Token::Punct("(")) {
        return None;
    }
    let mut j = i + 2;
    loop {
        match tokens.get(j)? {
            Token::Literal | Token::Placeholder(_) => j += 1,
            _ => return None,
        }
        match tokens.get(j)? {
            Token::Punct(",") => j += 1,
            Token::Punct(")") => return Some(j + 1),
            _ => return None,
        }
    }
}

/// Appends a token, with one space where the statement had whitespace or
/// a comment.
fn push_token(out: &mut String, token: &Token<'_>, spaced: bool) {
    let text = match token {
        Token::Word(s) | Token::Quoted(s) | Token::Placeholder(s) | Token::Punct(s) => s,
        Token::Literal => "?",
    };
    if spaced {
        out.push(' ');
    }
    out.push_str(text);
}

/// Operation and table of a statement, as far as they can be read without
/// guessing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// First keyword, upper-cased (`SELECT`, `INSERT`...). `None` for
    /// several statements in one text, or a text that does not start with
    /// a word.
    pub operation: Option<String>,
    /// The one table the statement reads or writes, when its form says so
    /// plainly: `SELECT .. FROM t` (no join, no second table, no subquery),
    /// `INSERT INTO t`, `UPDATE t`, `DELETE FROM t`. As written, quotes
    /// dropped, schema kept (`public.orders`).
    pub collection: Option<String>,
}

impl Summary {
    /// `db.query.summary`: `{operation} {table}` or the operation alone.
    pub fn text(&self) -> Option<String> {
        let op = self.operation.as_deref()?;
        Some(match &self.collection {
            Some(table) => format!("{op} {table}"),
            None => op.to_owned(),
        })
    }
}

/// Reads the operation and table of `sql`. `complete` says whether `sql`
/// is the whole statement: from a cut one, the table is read only if the
/// tokens after it were captured too (a cut `FROM a` might go on `, b`).
pub fn summarize(sql: &str, dialect: Dialect, complete: bool) -> Summary {
    let mut tokens: Vec<Token<'_>> = tokenize(sql, dialect).into_iter().map(|t| t.0).collect();
    // A trailing `;` ends the one statement; anything after it is a second.
    if tokens.last() == Some(&Token::Punct(";")) {
        tokens.pop();
    }
    if tokens.contains(&Token::Punct(";")) {
        return Summary::default();
    }
    let Some(Token::Word(first)) = tokens.first() else {
        return Summary::default();
    };
    let operation = first.to_ascii_uppercase();
    let collection = match operation.as_str() {
        "SELECT" | "DELETE" => single_table_after(&tokens, "FROM", complete),
        "INSERT" | "REPLACE" => single_table_after(&tokens, "INTO", complete),
        "UPDATE" => table_at(&tokens, 1, complete),
        _ => None,
    };
    Summary {
        operation: Some(operation),
        collection,
    }
}

/// The table right after the first top-level `keyword`, if it is the only
/// one: no other `FROM`/`JOIN`, no subquery, no comma list.
fn single_table_after(tokens: &[Token<'_>], keyword: &str, complete: bool) -> Option<String> {
    let mut depth = 0usize;
    let mut found = None;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct("(") => depth += 1,
            Token::Punct(")") => depth = depth.saturating_sub(1),
            Token::Word(w) if w.eq_ignore_ascii_case(keyword) => {
                if depth != 0 || found.is_some() {
                    return None;
                }
                found = Some(i + 1);
            }
            // A second source table (or a `FROM` in a subquery).
            Token::Word(w)
                if (w.eq_ignore_ascii_case("join") || w.eq_ignore_ascii_case("from"))
                    && (found.is_some() || depth != 0) =>
            {
                return None;
            }
            _ => {}
        }
    }
    table_at(tokens, found?, complete)
}

/// A (schema-qualified) table name starting at `at`, followed by something
/// that is not another source table.
fn table_at(tokens: &[Token<'_>], at: usize, complete: bool) -> Option<String> {
    let mut name = String::new();
    let mut i = at;
    loop {
        let part = match tokens.get(i)? {
            Token::Word(w) if !is_reserved(w) => *w,
            Token::Quoted(q) => &q[1..q.len().saturating_sub(1)],
            _ => return None,
        };
        name.push_str(part);
        if tokens.get(i + 1) == Some(&Token::Punct(".")) {
            name.push('.');
            i += 2;
        } else {
            break;
        }
    }
    match tokens.get(i + 1) {
        // `FROM a, b` is not one table, nor `FROM f(...)` a table (but
        // `INTO t (a, b)` is).
        Some(Token::Punct(",")) => None,
        Some(Token::Punct("(")) if !matches!(tokens.get(at - 1), Some(Token::Word(w)) if w.eq_ignore_ascii_case("into")) => {
            None
        }
        // A cut statement may go on with `, b`.
        None if !complete => None,
        _ if name.is_empty() => None,
        _ => Some(name),
    }
}

/// Words that cannot be a bare table name (what follows `FROM` in
/// `SELECT 1 FROM (`... or `DELETE FROM ONLY t`).
fn is_reserved(word: &str) -> bool {
    ["select", "only", "lateral", "unnest", "values", "where"]
        .iter()
        .any(|r| word.eq_ignore_ascii_case(r))
}

/// Splits `sql` into tokens, literals replaced. Never fails: a byte it
/// does not know is punctuation, a cut literal is still a literal.
fn tokenize(sql: &str, dialect: Dialect) -> Vec<(Token<'_>, bool)> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    // Whether whitespace or a comment came before the next token.
    let mut spaced = false;
    macro_rules! emit {
        ($token:expr) => {{
            tokens.push(($token, spaced));
            spaced = false;
        }};
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' => {
                i += 1;
                spaced = true;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = line_end(bytes, i);
                spaced = true;
            }
            b'#' if dialect == Dialect::MySql => {
                i = line_end(bytes, i);
                spaced = true;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = find(bytes, i + 2, b"*/").map_or(bytes.len(), |e| e + 2);
                spaced = true;
            }
            b'\'' => {
                i = quoted_end(bytes, i, b'\'', dialect == Dialect::MySql);
                emit!(Token::Literal);
            }
            b'"' if dialect == Dialect::MySql => {
                i = quoted_end(bytes, i, b'"', true);
                emit!(Token::Literal);
            }
            b'"' | b'`' => {
                i = quoted_end(bytes, i, b, false);
                emit!(Token::Quoted(&sql[start..i]));
            }
            b'$' if dialect == Dialect::Postgres => {
                let digits = run(bytes, i + 1, |c| c.is_ascii_digit());
                if digits > i + 1 {
                    i = digits;
                    emit!(Token::Placeholder(&sql[start..i]));
                } else if let Some(end) = dollar_quoted_end(bytes, i) {
                    i = end;
                    emit!(Token::Literal);
                } else {
                    i += 1;
                    emit!(Token::Punct("$"));
                }
            }
            b'?' => {
                i += 1;
                emit!(Token::Placeholder("?"));
            }
            b'0'..=b'9' => {
                i = number_end(bytes, i);
                emit!(Token::Literal);
            }
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(bytes, i + 1);
                emit!(Token::Literal);
            }
            _ if is_word_byte(b) => {
                i = run(bytes, i, is_word_byte);
                // E'..', B'..', X'..', N'..' and U&'..' strings: the prefix
                // is part of the literal.
                let word = &sql[start..i];
                let prefixed = bytes.get(i) == Some(&b'\'')
                    && ["e", "b", "x", "n"]
                        .iter()
                        .any(|p| word.eq_ignore_ascii_case(p));
                if prefixed {
                    let escapes = dialect == Dialect::MySql || word.eq_ignore_ascii_case("e");
                    i = quoted_end(bytes, i, b'\'', escapes);
                    emit!(Token::Literal);
                } else {
                    emit!(Token::Word(word));
                }
            }
            _ => {
                // Two-character operators as one token, else one character
                // at a time, UTF-8 aware.
                let len = if TWO_CHAR_OPERATORS
                    .iter()
                    .any(|op| bytes[i..].starts_with(op))
                {
                    2
                } else {
                    sql[i..].chars().next().map_or(1, char::len_utf8)
                };
                i += len;
                let punct = &sql[start..i];
                if punct == ":"
                    && bytes.get(i).is_some_and(|c| c.is_ascii_alphabetic())
                    && tokens.last().map(|t| &t.0) != Some(&Token::Punct(":"))
                {
                    // `:name` placeholder (not a `::type` cast).
                    i = run(bytes, i, is_word_byte);
                    emit!(Token::Placeholder(&sql[start..i]));
                } else {
                    emit!(Token::Punct(punct));
                }
            }
        }
    }
    tokens
}

/// Operators kept whole so `$1::int` reads back as it was written.
const TWO_CHAR_OPERATORS: [&[u8]; 7] = [b"::", b"||", b"<=", b">=", b"<>", b"!=", b"->"];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn run(bytes: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && keep(bytes[i]) {
        i += 1;
    }
    i
}

fn line_end(bytes: &[u8], i: usize) -> usize {
    find(bytes, i, b"\n").unwrap_or(bytes.len())
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// End of a quoted run starting at `i` (the quote): doubled quotes stay
/// inside, and so do backslash-escaped ones where `backslash` says so.
fn quoted_end(bytes: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' if backslash => j += 2,
            c if c == quote => {
                if bytes.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return j + 1;
                }
            }
            _ => j += 1,
        }
    }
    bytes.len()
}

/// `$tag$ ... $tag$` starting at `i`, or `None` if `i` does not start a tag.
fn dollar_quoted_end(bytes: &[u8], i: usize) -> Option<usize> {
    let tag_end = run(bytes, i + 1, |c| c.is_ascii_alphanumeric() || c == b'_');
    if bytes.get(tag_end) != Some(&b'$') {
        return None;
    }
    let tag = &bytes[i..=tag_end];
    Some(find(bytes, tag_end + 1, tag).map_or(bytes.len(), |e| e + tag.len()))
}

/// End of a number: digits, one fraction, an exponent, hex `0x..`.
fn number_end(bytes: &[u8], i: usize) -> usize {
    let mut j = run(bytes, i, |c| {
        c.is_ascii_alphanumeric() || c == b'.' || c == b'_'
    });
    // `1e-5`: the sign belongs to the exponent.
    while matches!(bytes.get(j), Some(b'-' | b'+'))
        && matches!(bytes.get(j - 1), Some(b'e' | b'E'))
        && !bytes[i..j].starts_with(b"0x")
    {
        j = run(bytes, j + 1, |c| c.is_ascii_alphanumeric());
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_table() {
        use Dialect::{MySql, Postgres};
        let cases: &[(Dialect, &str, &str)] = &[
            (
                Postgres,
                "SELECT * FROM users WHERE id = 42",
                "SELECT * FROM users WHERE id = ?",
            ),
            (
                Postgres,
                "select name from t where n = 'O''Brien' and x=-1.5e-3",
                "select name from t where n = ? and x=-?",
            ),
            (Postgres, "SELECT $1::int, $2", "SELECT $1::int, $2"),
            (Postgres, "SELECT E'a\\'b', 'c'", "SELECT ?, ?"),
            (
                Postgres,
                "SELECT $f$ secret ' $f$ FROM t",
                "SELECT ? FROM t",
            ),
            (
                Postgres,
                "SELECT \"Weird Col\" FROM \"Tab\"",
                "SELECT \"Weird Col\" FROM \"Tab\"",
            ),
            (
                Postgres,
                "SELECT 1 -- password=hunter2\n, 2 /* 3 */",
                "SELECT ? , ?",
            ),
            (
                Postgres,
                "DELETE FROM t WHERE id IN (1, 2, 3) AND k IN('a','b')",
                "DELETE FROM t WHERE id IN (?) AND k IN(?)",
            ),
            (Postgres, "SELECT count(*) FROM t", "SELECT count(*) FROM t"),
            (
                Postgres,
                "INSERT INTO t (a, b) VALUES (1, 'x')",
                "INSERT INTO t (a, b) VALUES (?, ?)",
            ),
            (
                Postgres,
                "SELECT x'ff', b'01', 0xdead, .5",
                "SELECT ?, ?, ?, ?",
            ),
            (
                Postgres,
                "SELECT * FROM t WHERE s = 'cut in the mid",
                "SELECT * FROM t WHERE s = ?",
            ),
            (
                Postgres,
                "SELECT * FROM t1 WHERE c2 = 7",
                "SELECT * FROM t1 WHERE c2 = ?",
            ),
            (
                MySql,
                "SELECT \"str\", `col` FROM db.t WHERE a='x\\'y' # c",
                "SELECT ?, `col` FROM db.t WHERE a=?",
            ),
            (
                MySql,
                "UPDATE t SET v = ? WHERE id = 9",
                "UPDATE t SET v = ? WHERE id = ?",
            ),
            (
                Postgres,
                "SELECT 'é' || nom FROM café",
                "SELECT ? || nom FROM café",
            ),
        ];
        for (dialect, sql, want) in cases {
            assert_eq!(sanitize(sql, *dialect), *want, "{sql}");
        }
    }

    #[test]
    fn sanitize_never_keeps_a_digit_of_a_value() {
        let secret = "SELECT * FROM cards WHERE pan = '4111111111111111' OR pin = 1234";
        let out = sanitize(secret, Dialect::Postgres);
        assert!(!out.contains("4111") && !out.contains("1234"), "{out}");
    }

    #[test]
    fn summary_table() {
        let cases: &[(&str, bool, Option<&str>, Option<&str>)] = &[
            (
                "SELECT * FROM orders WHERE id = $1",
                true,
                Some("SELECT"),
                Some("orders"),
            ),
            (
                "select a from public.orders o",
                true,
                Some("SELECT"),
                Some("public.orders"),
            ),
            (
                "SELECT * FROM \"Orders\";",
                true,
                Some("SELECT"),
                Some("Orders"),
            ),
            (
                "SELECT * FROM a JOIN b ON a.id = b.id",
                true,
                Some("SELECT"),
                None,
            ),
            ("SELECT * FROM a, b", true, Some("SELECT"), None),
            ("SELECT * FROM (SELECT 1) s", true, Some("SELECT"), None),
            (
                "SELECT (SELECT max(x) FROM b) FROM a",
                true,
                Some("SELECT"),
                None,
            ),
            (
                "SELECT * FROM generate_series(1, 3)",
                true,
                Some("SELECT"),
                None,
            ),
            ("SELECT 1", true, Some("SELECT"), None),
            (
                "INSERT INTO items (a) VALUES (1)",
                true,
                Some("INSERT"),
                Some("items"),
            ),
            (
                "UPDATE items SET a = 1",
                true,
                Some("UPDATE"),
                Some("items"),
            ),
            (
                "DELETE FROM items WHERE a = 1",
                true,
                Some("DELETE"),
                Some("items"),
            ),
            ("SELECT * FROM items", false, Some("SELECT"), None),
            (
                "SELECT * FROM items WHERE a",
                false,
                Some("SELECT"),
                Some("items"),
            ),
            ("BEGIN", true, Some("BEGIN"), None),
            ("SELECT 1; SELECT 2", true, None, None),
            ("  (SELECT 1)", true, None, None),
        ];
        for (sql, complete, op, table) in cases {
            let s = summarize(sql, Dialect::Postgres, *complete);
            assert_eq!(s.operation.as_deref(), *op, "{sql}");
            assert_eq!(s.collection.as_deref(), *table, "{sql}");
        }
        let s = summarize("SELECT * FROM orders", Dialect::MySql, true);
        assert_eq!(s.text().as_deref(), Some("SELECT orders"));
    }
}
