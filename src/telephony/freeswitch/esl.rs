//! FreeSWITCH event socket (ESL) framing, sans-IO: header blocks ending in a blank line, an
//! optional `Content-Length` body; events as `text/event-json` (or `text/event-plain`, values
//! URL-encoded). libesl is C and no maintained Rust crate speaks ESL, so the few rules are
//! written here.

use std::collections::HashMap;

/// Largest frame accepted (an event with a long body); more is a broken peer.
pub const MAX_FRAME: usize = 1 << 20;

/// One message from FreeSWITCH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("Content-Type").unwrap_or("")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EslError {
    #[error("ESL frame over {MAX_FRAME} bytes")]
    TooLarge,
    #[error("ESL Content-Length `{0}` is not a number")]
    BadLength(String),
}

/// Splits the byte stream into frames.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EslError> {
        // Blank lines between frames are allowed.
        while self.buf.first() == Some(&b'\n') {
            self.buf.remove(0);
        }
        let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") else {
            if self.buf.len() > MAX_FRAME {
                return Err(EslError::TooLarge);
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let headers = parse_headers(&head, false);
        let len = match headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        {
            None => 0,
            Some((_, v)) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| EslError::BadLength(v.clone()))?,
        };
        if len > MAX_FRAME {
            return Err(EslError::TooLarge);
        }
        let start = end + 2;
        if self.buf.len() < start + len {
            return Ok(None);
        }
        let body = String::from_utf8_lossy(&self.buf[start..start + len]).into_owned();
        self.buf.drain(..start + len);
        Ok(Some(Frame { headers, body }))
    }
}

fn parse_headers(text: &str, url_decoded: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = v.trim_start();
            let v = if url_decoded {
                url_decode(v)
            } else {
                v.to_string()
            };
            (k.trim().to_string(), v)
        })
        .collect()
}

/// An event's headers (and body), from `text/event-json` or `text/event-plain`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Event {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn name(&self) -> &str {
        self.get("Event-Name").unwrap_or("")
    }
}

/// The event a frame carries, if it is one.
pub fn event(frame: &Frame) -> Option<Event> {
    match frame.content_type() {
        "text/event-json" => {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&frame.body).ok()?;
            let mut ev = Event::default();
            for (k, v) in v {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                if k == "_body" {
                    ev.body = s;
                } else {
                    ev.headers.insert(k, s);
                }
            }
            Some(ev)
        }
        "text/event-plain" => {
            let (head, body) = match frame.body.split_once("\n\n") {
                Some((h, b)) => (h, b.to_string()),
                None => (frame.body.as_str(), String::new()),
            };
            Some(Event {
                headers: parse_headers(head, true).into_iter().collect(),
                body,
            })
        }
        _ => None,
    }
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A command line as sent to FreeSWITCH. Newlines inside would start a new command, so a
/// command carrying one is refused (arguments come from the network: a caller's number).
pub fn command(line: &str) -> Option<String> {
    command_with(line, &[])
}

/// A command line with header lines (e.g. `Job-UUID` for `bgapi`).
pub fn command_with(line: &str, headers: &[(String, String)]) -> Option<String> {
    let bad = |s: &str| s.contains('\n') || s.contains('\r');
    if bad(line)
        || headers
            .iter()
            .any(|(k, v)| bad(k) || bad(v) || k.contains(':'))
    {
        return None;
    }
    let mut out = format!("{line}\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_bodies_by_length() {
        let json = r#"{"Event-Name":"DTMF","Unique-ID":"u1","DTMF-Digit":"5"}"#;
        let wire = format!(
            "Content-Type: auth/request\n\nContent-Type: api/response\nContent-Length: 11\n\n+OK Success\n\nContent-Length: {}\nContent-Type: text/event-json\n\n{json}",
            json.len()
        );
        let mut p = Parser::default();
        let mut frames = vec![];
        for chunk in wire.as_bytes().chunks(7) {
            p.push(chunk);
            while let Some(f) = p.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].content_type(), "auth/request");
        assert_eq!(frames[1].body, "+OK Success");
        let ev = event(&frames[2]).unwrap();
        assert_eq!(ev.name(), "DTMF");
        assert_eq!(ev.get("DTMF-Digit"), Some("5"));
    }

    #[test]
    fn plain_events_are_url_decoded() {
        let body = "Event-Name: CHANNEL_EXECUTE_COMPLETE\nApplication-Response: FILE%20PLAYED\nCaller-Caller-ID-Number: %2B15551230000\n";
        let f = Frame {
            headers: vec![("Content-Type".into(), "text/event-plain".into())],
            body: body.into(),
        };
        let ev = event(&f).unwrap();
        assert_eq!(ev.get("Application-Response"), Some("FILE PLAYED"));
        assert_eq!(ev.get("Caller-Caller-ID-Number"), Some("+15551230000"));
    }

    #[test]
    fn bad_lengths_and_floods_are_errors_not_panics() {
        let mut p = Parser::default();
        p.push(b"Content-Length: x\n\n");
        assert_eq!(p.next_frame(), Err(EslError::BadLength("x".into())));
        let mut p = Parser::default();
        p.push(&vec![b'a'; MAX_FRAME + 1]);
        assert_eq!(p.next_frame(), Err(EslError::TooLarge));
    }

    #[test]
    fn commands_cannot_smuggle_a_second_command() {
        assert_eq!(command("api uuid_kill x").unwrap(), "api uuid_kill x\n\n");
        assert_eq!(command("api uuid_setvar x v 1\n\napi fsctl shutdown"), None);
        assert_eq!(
            command_with("bgapi status", &[("Job-UUID".into(), "j1".into())]).unwrap(),
            "bgapi status\nJob-UUID: j1\n\n"
        );
        assert_eq!(
            command_with("bgapi status", &[("Job-UUID".into(), "j1\n\nexit".into())]),
            None
        );
    }
}
