//! DTMF carried in SIP INFO bodies: `application/dtmf-relay` (`Signal=5\r\nDuration=160`)
//! and `application/dtmf` (the bare key).

use super::Digit;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InfoError {
    #[error("unsupported INFO content type {0:?}")]
    UnsupportedType(String),
    #[error("INFO body has no DTMF signal")]
    NoSignal,
    #[error("INFO body has an invalid DTMF signal {0:?}")]
    BadSignal(String),
}

/// Content types this module understands (for `Accept` headers).
pub const CONTENT_TYPES: [&str; 2] = ["application/dtmf-relay", "application/dtmf"];

/// Parses the key carried by an INFO request. `content_type` may carry parameters.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Digit, InfoError> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = String::from_utf8_lossy(body);
    match mime.as_str() {
        "application/dtmf-relay" => {
            let signal = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("signal"))
                .map(|(_, v)| v.trim())
                .ok_or(InfoError::NoSignal)?;
            signal_to_digit(signal)
        }
        "application/dtmf" => {
            let signal = text.trim();
            if signal.is_empty() {
                return Err(InfoError::NoSignal);
            }
            signal_to_digit(signal)
        }
        _ => Err(InfoError::UnsupportedType(mime)),
    }
}

/// A signal is either the key itself or its RFC 4733 event code (some gateways send
/// `Signal=10` for `*` and `Signal=11` for `#`).
fn signal_to_digit(signal: &str) -> Result<Digit, InfoError> {
    let mut chars = signal.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && let Some(d) = Digit::from_char(c)
    {
        return Ok(d);
    }
    signal
        .parse::<u8>()
        .ok()
        .and_then(Digit::from_event_code)
        .ok_or_else(|| InfoError::BadSignal(signal.chars().take(16).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digit {
        Digit::from_char(c).unwrap()
    }

    #[test]
    fn dtmf_relay_body_is_read() {
        assert_eq!(
            parse("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Ok(d('5'))
        );
        assert_eq!(
            parse("Application/DTMF-Relay", b"signal = #\nDuration= 250"),
            Ok(d('#'))
        );
        assert_eq!(parse("application/dtmf-relay", b"Signal=10"), Ok(d('*')));
        assert_eq!(parse("application/dtmf-relay", b"Signal=11"), Ok(d('#')));
    }

    #[test]
    fn dtmf_body_is_read() {
        assert_eq!(parse("application/dtmf", b"7"), Ok(d('7')));
        assert_eq!(parse("application/dtmf; charset=x", b" *\r\n"), Ok(d('*')));
    }

    #[test]
    fn garbage_is_an_error_not_a_digit() {
        assert_eq!(
            parse("application/dtmf-relay", b"Duration=160"),
            Err(InfoError::NoSignal)
        );
        assert!(matches!(
            parse("application/dtmf-relay", b"Signal=55"),
            Err(InfoError::BadSignal(_))
        ));
        assert!(matches!(
            parse("application/dtmf", b"\xff\xfe"),
            Err(InfoError::BadSignal(_))
        ));
        assert_eq!(parse("application/dtmf", b"  "), Err(InfoError::NoSignal));
        assert!(matches!(
            parse("text/plain", b"5"),
            Err(InfoError::UnsupportedType(_))
        ));
    }
}
