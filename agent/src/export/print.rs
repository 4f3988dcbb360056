//! The terminal view, for trying the agent on one machine: one line per
//! finished span as it arrives, in fixed-width columns so that a trace can
//! be followed by eye (ids in full, so they can be pasted into a backend).
//!
//! ```text
//! SERVICE              KIND   NAME                             STATUS            DURATION  TRACE ID                         SPAN ID          PARENT
//! frontend             CLIENT POST                             503              12.346 ms  4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 a3ce929d0e0e4736
//! frontend             SERVER GET /checkout                    200              48.112 ms  4bf92f3577b34da6a3ce929d0e0e4736 a3ce929d0e0e4736 -
//! ```

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};

use tokio::sync::mpsc;

use crate::model::span::{AttributeValue, Span, SpanBatch, SpanKind, SpanStatus};

/// The printer could not write (e.g. the reading end of a pipe closed).
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// Writing a line failed.
    #[error("writing the span view")]
    Write {
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Prints a header, then one line per span until `rx` closes.
///
/// Blocking: terminal writes can stall (a paused terminal, a slow pipe), so
/// run it on a blocking thread, not on the async workers:
/// `tokio::task::spawn_blocking(move || run_printer(rx, io::stdout(), colour))`.
/// Spans that arrive while it is stalled wait in `rx`; the sender decides
/// what happens when that is full (see [`super::fan_out`]).
pub fn run_printer<W: Write>(
    mut rx: mpsc::Receiver<SpanBatch>,
    mut writer: W,
    colour: bool,
) -> Result<(), PrintError> {
    let mut write = |line: &str| {
        // Flushed per line: spans should show up as they finish, even when
        // `writer` buffers.
        writeln!(writer, "{line}")
            .and_then(|()| writer.flush())
            .map_err(|source| PrintError::Write { source })
    };
    write(&header())?;
    while let Some(spans) = rx.blocking_recv() {
        for span in &spans {
            write(&format_line(span, colour))?;
        }
    }
    Ok(())
}

/// Whether to colour output written to `stream`: only for a terminal, and
/// not when `NO_COLOR` is set (<https://no-color.org>).
pub fn use_colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

const SERVICE_WIDTH: usize = 20;
const KIND_WIDTH: usize = 6;
const NAME_WIDTH: usize = 32;
/// Fits every HTTP code and most gRPC code names.
const STATUS_WIDTH: usize = 11;
/// Up to "9999999.999 ms" (almost three hours).
const DURATION_WIDTH: usize = 14;
const TRACE_ID_WIDTH: usize = 32;
const SPAN_ID_WIDTH: usize = 16;

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

fn header() -> String {
    format!(
        "{:<SERVICE_WIDTH$} {:<KIND_WIDTH$} {:<NAME_WIDTH$} {:<STATUS_WIDTH$} {:>DURATION_WIDTH$}  \
         {:<TRACE_ID_WIDTH$} {:<SPAN_ID_WIDTH$} PARENT",
        "SERVICE", "KIND", "NAME", "STATUS", "DURATION", "TRACE ID", "SPAN ID"
    )
}

fn format_line(span: &Span, colour: bool) -> String {
    let kind = match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    // Padded before colouring: escape codes have no width on screen.
    let mut status = format!("{:<STATUS_WIDTH$}", fit(&status_text(span), STATUS_WIDTH));
    if colour {
        let code = match span.status {
            SpanStatus::Error(_) => RED,
            SpanStatus::Unset => GREEN,
        };
        status = format!("{code}{status}{RESET}");
    }
    let duration = format!("{:.3} ms", span.duration_ns() as f64 / 1e6);
    let parent = span
        .parent_span_id
        .map_or_else(|| "-".to_owned(), |id| hex(&id));
    format!(
        "{:<SERVICE_WIDTH$} {kind:<KIND_WIDTH$} {:<NAME_WIDTH$} {status} {duration:>DURATION_WIDTH$}  \
         {:<TRACE_ID_WIDTH$} {:<SPAN_ID_WIDTH$} {parent}",
        fit(&span.resource.service_name, SERVICE_WIDTH),
        fit(&span.name, NAME_WIDTH),
        hex(&span.trace_id),
        hex(&span.span_id),
    )
}

/// The response's code when there is one (HTTP status, gRPC status name),
/// else the error type, else `-`.
fn status_text(span: &Span) -> String {
    let code = [
        "http.response.status_code",
        "rpc.response.status_code",
        "rpc.grpc.status_code",
    ]
    .into_iter()
    .find_map(|key| span.attribute(key));
    match (code, &span.status) {
        (Some(AttributeValue::Int(code)), _) => code.to_string(),
        (Some(AttributeValue::Str(code)), _) => code.to_string(),
        (_, SpanStatus::Error(description)) => match span.attribute("error.type") {
            Some(AttributeValue::Str(error_type)) => error_type.to_string(),
            _ if !description.is_empty() => description.clone(),
            _ => "ERROR".to_owned(),
        },
        _ => "-".to_owned(),
    }
}

/// Cut to `width` characters, marking the cut, so columns stay aligned.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            // Writing to a String cannot fail.
            let _ = write!(text, "{byte:02x}");
            text
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::Attribute;
    use crate::test_support::{self, resource};

    fn span(service: &str, kind: SpanKind, name: &str) -> Span {
        let mut span = test_support::span(&resource(service, service), name);
        span.kind = kind;
        span
    }

    #[test]
    fn server_span_line() {
        let mut server = span("checkout", SpanKind::Server, "GET /orders/{id}");
        server.attributes = vec![Attribute::new("http.response.status_code", 200_i64)];
        assert_eq!(
            format_line(&server, false),
            "checkout             SERVER GET /orders/{id}                 200              12.346 ms  \
             4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 -"
        );
    }

    #[test]
    fn columns_line_up_with_the_header() {
        let header = header();
        let mut client = span(
            "a-service-with-a-very-long-name",
            SpanKind::Client,
            "POST /a/very/long/route/that/does/not/fit/{id}",
        );
        client.parent_span_id = Some([0x11; 8]);
        client.end_unix_ns = client.start_unix_ns + 123_456_789_000;
        for status in [SpanStatus::Unset, SpanStatus::Error("timeout".into())] {
            client.status = status;
            let line = format_line(&client, false);
            let column = |text: &str, needle: &str| {
                text.char_indices()
                    .position(|(byte, _)| text[byte..].starts_with(needle))
                    .unwrap_or_else(|| panic!("{needle:?} not in {text:?}"))
            };
            assert_eq!(column(&line, "CLIENT"), column(&header, "KIND"), "{line}");
            assert_eq!(column(&line, "POST"), column(&header, "NAME"), "{line}");
            assert_eq!(
                column(&line, "4bf92f"),
                column(&header, "TRACE ID"),
                "{line}"
            );
            assert_eq!(
                column(&line, "00f067"),
                column(&header, "SPAN ID"),
                "{line}"
            );
            assert_eq!(
                column(&line, "1111111111111111"),
                column(&header, "PARENT"),
                "{line}"
            );
            assert!(line.starts_with("a-service-with-a-ve… "), "{line}");
            assert!(line.contains("123456.789 ms"), "{line}");
        }
    }

    #[test]
    fn status_column() {
        let mut grpc = span("api", SpanKind::Server, "shop.Cart/Add");
        grpc.attributes = vec![Attribute::new("rpc.response.status_code", "UNAVAILABLE")];
        grpc.status = SpanStatus::Error("UNAVAILABLE".into());
        let mut reset = span("api", SpanKind::Client, "GET");
        reset.attributes = vec![Attribute::new("error.type", "connection_reset")];
        reset.status = SpanStatus::Error("connection reset".into());
        let mut bare_error = span("api", SpanKind::Client, "GET");
        bare_error.status = SpanStatus::Error(String::new());
        let mut legacy_grpc = span("api", SpanKind::Client, "shop.Cart/Add");
        legacy_grpc.attributes = vec![Attribute::new("rpc.grpc.status_code", 0_i64)];
        let cases = [
            (&grpc, "UNAVAILABLE"),
            (&reset, "connection_reset"),
            (&bare_error, "ERROR"),
            (&legacy_grpc, "0"),
            (&span("api", SpanKind::Server, "GET"), "-"),
        ];
        for (span, expected) in cases {
            assert_eq!(status_text(span), expected, "{span:?}");
        }
    }

    #[test]
    fn colour_marks_errors_only_when_asked() {
        let mut failed = span("api", SpanKind::Client, "GET");
        failed.attributes = vec![Attribute::new("http.response.status_code", 503_i64)];
        failed.status = SpanStatus::Error("503".into());
        let coloured = format_line(&failed, true);
        assert!(
            coloured.contains(&format!("{RED}503        {RESET}")),
            "{coloured:?}"
        );
        let ok = format_line(&span("api", SpanKind::Server, "GET"), true);
        assert!(ok.contains(&format!("{GREEN}-")), "{ok:?}");
        assert!(!format_line(&failed, false).contains('\x1b'));
    }

    #[test]
    fn prints_a_header_then_a_line_per_span() {
        let (tx, rx) = mpsc::channel(4);
        let sent = tx.try_send(vec![
            span("api", SpanKind::Server, "GET /a"),
            span("api", SpanKind::Server, "GET /b"),
        ]);
        assert!(sent.is_ok(), "{sent:?}");
        drop(tx);
        let mut output = Vec::new();
        let printed = run_printer(rx, &mut output, false);
        assert!(printed.is_ok(), "{printed:?}");
        let output = String::from_utf8_lossy(&output);
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 3, "{output}");
        assert_eq!(lines[0], header());
        assert!(
            lines[1].contains("GET /a") && lines[2].contains("GET /b"),
            "{output}"
        );
    }

    #[test]
    fn stops_with_an_error_when_the_output_is_gone() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (_tx, rx) = mpsc::channel(1);
        let printed = run_printer(rx, Closed, false);
        assert!(
            matches!(printed, Err(PrintError::Write { .. })),
            "{printed:?}"
        );
    }
}
