//! gRPC over HTTP/2 as a pure API over header values: status codes and
//! their names, which codes are server-side errors, the method from
//! `:path`, the `grpc-timeout` deadline and the `content-type` that marks a
//! call (see the gRPC "PROTOCOL-HTTP2" document).

/// `OK`.
pub const OK: u32 = 0;
/// `CANCELLED`: what a client reports for a call it reset.
pub const CANCELLED: u32 = 1;
/// `DEADLINE_EXCEEDED`: what a client reports for a call reset after its
/// `grpc-timeout`.
pub const DEADLINE_EXCEEDED: u32 = 4;
const RESOURCE_EXHAUSTED: u32 = 8;
const PERMISSION_DENIED: u32 = 7;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// Status names, by code (grpc/doc/statuscodes.md).
const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Codes that are errors on the server side (OpenTelemetry gRPC
/// conventions); on the client side every code but `OK` is.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// The name of a status code (`rpc.response.status_code`); codes outside
/// the known range are shown as their number.
pub fn status_name(code: u32) -> std::borrow::Cow<'static, str> {
    match STATUS_NAMES.get(code as usize) {
        Some(name) => (*name).into(),
        None => code.to_string().into(),
    }
}

/// The status a client reports for a stream reset with HTTP/2 error `code`
/// (PROTOCOL-HTTP2, "Errors"); a `CANCEL` after the call's deadline is
/// `DEADLINE_EXCEEDED`.
pub fn status_for_reset(code: u32, deadline_passed: bool) -> u32 {
    match code {
        0x8 if deadline_passed => DEADLINE_EXCEEDED,
        0x8 => CANCELLED,
        0x7 => UNAVAILABLE,
        0xb => RESOURCE_EXHAUSTED,
        0xc => PERMISSION_DENIED,
        _ => INTERNAL,
    }
}

/// True if a call whose client reset it `elapsed_ns` after its first
/// request bytes had reached its `grpc-timeout` of `timeout_ns`. Clients
/// compute that header from their deadline before the request reaches the
/// socket or OpenSSL, and may round it up (grpcio sends `201m` for a
/// 200 ms deadline), so a reset at the deadline can look a little early on
/// the agent's clock: a tenth of the timeout, at least 5 ms, is allowed.
pub fn deadline_passed(elapsed_ns: u64, timeout_ns: u64) -> bool {
    let slack = (timeout_ns / 10).max(5_000_000);
    elapsed_ns.saturating_add(slack) >= timeout_ns
}

/// True if `code` marks a server span as an error.
pub fn is_server_error(code: u32) -> bool {
    SERVER_ERRORS.contains(&code)
}

/// A `grpc-status` value.
pub fn parse_status(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// True for `application/grpc` and its `+proto`, `+json`, `;...` forms.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    value
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// `(service, method)` from a `:path` of the form `/package.Service/Method`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// A `grpc-timeout` value (`TimeoutValue TimeoutUnit`: at most 8 digits
/// and one of `H M S m u n`) in nanoseconds.
pub fn parse_timeout(value: &[u8]) -> Option<u64> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let nanos_per_unit: u64 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    amount.checked_mul(nanos_per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_near_the_timeout_is_the_deadline() {
        let ms = 1_000_000;
        // grpcio's `201m` for a 200 ms deadline, reset when it fired.
        assert!(deadline_passed(200_935_000, 201 * ms));
        assert!(deadline_passed(150 * ms, 100 * ms));
        assert!(deadline_passed(91 * ms, 100 * ms));
        assert!(!deadline_passed(89 * ms, 100 * ms), "cancelled before");
        assert!(!deadline_passed(0, 100 * ms));
        assert!(
            deadline_passed(0, ms),
            "a 1 ms deadline is within the clocks' error"
        );
        assert!(deadline_passed(u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn status_names_and_error_sets() {
        assert_eq!(status_name(OK), "OK");
        assert_eq!(status_name(DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(42), "42");
        let server_errors: Vec<_> = (0..17)
            .filter(|&c| is_server_error(c))
            .map(status_name)
            .collect();
        assert_eq!(
            server_errors,
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
        assert_eq!(parse_status(b"14"), Some(14));
        // (HTTP/2 error code, deadline passed, status)
        for (code, late, status) in [
            (8, false, "CANCELLED"),
            (8, true, "DEADLINE_EXCEEDED"),
            (7, true, "UNAVAILABLE"),
            (11, false, "RESOURCE_EXHAUSTED"),
            (2, false, "INTERNAL"),
        ] {
            assert_eq!(status_name(status_for_reset(code, late)), status);
        }
        assert_eq!(parse_status(b"x"), None);
    }

    #[test]
    fn paths_content_types_and_timeouts() {
        assert_eq!(
            split_path("/sonde.test.Echo/Unary"),
            Some(("sonde.test.Echo", "Unary"))
        );
        assert_eq!(split_path("/Echo/Unary"), Some(("Echo", "Unary")));
        for bad in ["/", "/a", "a/b", "/a/", "//b", "/a/b/c"] {
            assert_eq!(split_path(bad), None, "{bad}");
        }
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"application/grpc;charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert_eq!(parse_timeout(b"200m"), Some(200_000_000));
        assert_eq!(parse_timeout(b"1S"), Some(1_000_000_000));
        assert_eq!(
            parse_timeout(b"99999999S"),
            Some(99_999_999 * 1_000_000_000)
        );
        assert_eq!(parse_timeout(b"99999999H"), None, "past u64 nanoseconds");
        for bad in [&b"m"[..], b"123456789m", b"10x", b"-1S", b""] {
            assert_eq!(parse_timeout(bad), None);
        }
    }
}
