//! SIP message parsing and writing (RFC 3261 §7, §20, §25).
//!
//! Why hand-written: the Rust SIP parsers available (rsip, unmaintained since 2022; the ezk
//! and rsipstack stacks, whose types come with their own transaction layers) either lag or pull
//! a whole stack, while the product needs exactly this: byte-faithful header copying into
//! responses, tolerance for what real peers send (compact names, folded lines, `Content-Length`
//! padded with spaces, lower-case names), hard size limits, and a parser that can never panic
//! on network input — it is a fuzz target. Headers are kept as (name, value) text in order;
//! typed views (Via, name-addr, CSeq, URI) are parsed on demand.

use std::fmt::Write as _;

/// Largest datagram accepted (a UDP payload cannot be larger).
pub const MAX_MESSAGE: usize = 65_535;
/// Most header fields in one message.
pub const MAX_HEADERS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    Refer,
    Notify,
    Subscribe,
    Update,
    Prack,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REGISTER" => Method::Register,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Register => "REGISTER",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be accepted. The text goes into the 400 reason phrase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("no blank line after the headers")]
    NoHeaderEnd,
    #[error("headers are not UTF-8")]
    NotUtf8,
    #[error("malformed start line")]
    BadStartLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    BadHeaderValue(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    #[error("Content-Length larger than the body received")]
    BodyTruncated,
}

/// Header fields in order. Names are stored in their canonical long form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

/// (long name, compact form) — RFC 3261 §7.3.3 and later registrations.
const COMPACT: &[(&str, &str)] = &[
    ("Call-ID", "i"),
    ("Contact", "m"),
    ("Content-Encoding", "e"),
    ("Content-Length", "l"),
    ("Content-Type", "c"),
    ("From", "f"),
    ("Subject", "s"),
    ("Supported", "k"),
    ("To", "t"),
    ("Via", "v"),
    ("Event", "o"),
    ("Refer-To", "r"),
    ("Referred-By", "b"),
    ("Allow-Events", "u"),
    ("Session-Expires", "x"),
];
/// Other headers whose canonical spelling we normalise (`call-id` → `Call-ID`, `cseq` → `CSeq`).
const CANONICAL: &[&str] = &[
    "CSeq",
    "Max-Forwards",
    "Record-Route",
    "Route",
    "User-Agent",
    "Server",
    "Allow",
    "Accept",
    "Require",
    "Unsupported",
    "Retry-After",
    "Warning",
    "Expires",
    "Reason",
];

fn canonical_name(name: &str) -> String {
    for (long, short) in COMPACT {
        if name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short) {
            return (*long).to_string();
        }
    }
    for c in CANONICAL {
        if name.eq_ignore_ascii_case(c) {
            return (*c).to_string();
        }
    }
    name.to_string()
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// First value of `name` (any case, compact forms included).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// All values of `name`, in order, one per header line.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name);
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((canonical_name(name), value.into()));
    }

    /// Replaces every `name` by one line with `value`, in the first one's place.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = canonical_name(name);
        let value = value.into();
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(i) => {
                self.0[i].1 = value;
                let mut j = 0;
                self.0.retain(|(n, _)| {
                    j += 1;
                    j - 1 == i || !n.eq_ignore_ascii_case(&name)
                });
            }
            None => self.0.push((name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        let name = canonical_name(name);
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Values of a header that may carry a comma-separated list (Via, Route, Allow...),
    /// flattened across lines.
    pub fn list<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.get_all(name).flat_map(split_list).collect()
    }
}

/// Splits a header value at top-level commas (not inside quotes or `<...>`).
pub fn split_list(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(v[start.min(v.len())..].trim());
    out.retain(|s| !s.is_empty());
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// A message that failed to parse. When the start line and headers were readable, `request`
/// holds them so a 400 can still be routed back to the sender.
#[derive(Debug)]
pub struct Malformed {
    pub error: ParseError,
    pub request: Option<Request>,
}

impl Message {
    /// Parses one datagram.
    pub fn parse(data: &[u8]) -> Result<Message, Malformed> {
        let fail = |error| Malformed {
            error,
            request: None,
        };
        // RFC 3261 §7.5: ignore CRLFs before the start line (also keep-alives).
        let start = data
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .ok_or(fail(ParseError::Empty))?;
        let data = &data[start..];
        if data.len() > MAX_MESSAGE {
            return Err(fail(ParseError::TooLarge));
        }
        let (head_len, body_start) = find_header_end(data).ok_or(fail(ParseError::NoHeaderEnd))?;
        let head = std::str::from_utf8(&data[..head_len]).map_err(|_| fail(ParseError::NotUtf8))?;
        let mut lines = unfold(head);
        let start_line = lines.next().ok_or(fail(ParseError::BadStartLine))?;
        let mut headers = Headers::new();
        for line in lines {
            if headers.0.len() == MAX_HEADERS {
                return Err(fail(ParseError::TooManyHeaders));
            }
            let (name, value) = line.split_once(':').ok_or(fail(ParseError::BadHeader))?;
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(fail(ParseError::BadHeader));
            }
            headers.push(name, value.trim());
        }
        let rest = &data[body_start..];

        let mut msg = if let Some(status) = start_line.strip_prefix("SIP/2.0 ") {
            let (code, reason) = status.split_once(' ').unwrap_or((status, ""));
            let code: u16 = code
                .parse()
                .ok()
                .filter(|c| (100..700).contains(c))
                .ok_or(fail(ParseError::BadStartLine))?;
            Message::Response(Response {
                code,
                reason: reason.to_string(),
                headers,
                body: Vec::new(),
            })
        } else {
            let mut parts = start_line.split(' ');
            let (Some(method), Some(uri), Some(version), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(fail(ParseError::BadStartLine));
            };
            if version != "SIP/2.0"
                || method.is_empty()
                || !method.bytes().all(is_token_char)
                || uri.is_empty()
            {
                return Err(fail(ParseError::BadStartLine));
            }
            Message::Request(Request {
                method: Method::parse(method),
                uri: uri.to_string(),
                headers,
                body: Vec::new(),
            })
        };

        let result = body_and_validate(&mut msg, rest);
        match (result, msg) {
            (Ok(()), msg) => Ok(msg),
            (Err(error), Message::Request(r)) => Err(Malformed {
                error,
                request: Some(r),
            }),
            (Err(error), Message::Response(_)) => Err(fail(error)),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

fn body_and_validate(msg: &mut Message, rest: &[u8]) -> Result<(), ParseError> {
    let headers = match msg {
        Message::Request(r) => &r.headers,
        Message::Response(r) => &r.headers,
    };
    // Content-Length: sipp pads the value with spaces; values are trimmed at parse time.
    let body = match headers.get("Content-Length") {
        Some(v) => {
            let len: usize = v
                .parse()
                .map_err(|_| ParseError::BadHeaderValue("Content-Length"))?;
            // RFC 3261 §18.3: over UDP a shorter body than declared is an error; extra
            // bytes after the declared length are discarded.
            rest.get(..len).ok_or(ParseError::BodyTruncated)?
        }
        None => rest,
    };
    let body = body.to_vec();
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if headers.get(name).is_none_or(str::is_empty) {
            return Err(ParseError::MissingHeader(match name {
                "Via" => "Via",
                "From" => "From",
                "To" => "To",
                "Call-ID" => "Call-ID",
                _ => "CSeq",
            }));
        }
    }
    let (_, cseq_method) =
        parse_cseq(headers.get("CSeq").unwrap_or("")).ok_or(ParseError::BadHeaderValue("CSeq"))?;
    let top_via = headers.list("Via").first().copied().unwrap_or("");
    Via::parse(top_via).ok_or(ParseError::BadHeaderValue("Via"))?;
    for name in ["From", "To"] {
        NameAddr::parse(headers.get(name).unwrap_or("")).ok_or(ParseError::BadHeaderValue(
            if name == "From" { "From" } else { "To" },
        ))?;
    }
    match msg {
        Message::Request(r) => {
            if cseq_method != r.method {
                return Err(ParseError::CSeqMismatch);
            }
            r.body = body;
        }
        Message::Response(r) => r.body = body,
    }
    Ok(())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Returns (end of header text, start of body). Accepts CRLF CRLF, or bare LF LF.
fn find_header_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l < c => Some((l, l + 2)),
        (Some(c), _) => Some((c, c + 4)),
        (None, Some(l)) => Some((l, l + 2)),
        (None, None) => None,
    }
}

/// Splits header text into logical lines, joining folded continuation lines (RFC 3261 §7.3.1).
fn unfold(head: &str) -> impl Iterator<Item = String> + '_ {
    let mut lines = head
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .peekable();
    std::iter::from_fn(move || {
        let mut line = lines.next()?.to_string();
        while let Some(next) = lines.peek() {
            if next.starts_with([' ', '\t']) {
                line.push(' ');
                line.push_str(next.trim());
                lines.next();
            } else {
                break;
            }
        }
        Some(line)
    })
    .filter(|l| !l.is_empty())
}

pub fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let mut it = v.split_whitespace();
    let num = it.next()?.parse::<u32>().ok()?;
    let method = it.next()?;
    if it.next().is_some() || !method.bytes().all(is_token_char) {
        return None;
    }
    Some((num, Method::parse(method)))
}

fn write_message(out: &mut String, headers: &Headers, body: &[u8]) -> Vec<u8> {
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = std::mem::take(out).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

impl Request {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        write_message(&mut s, &self.headers, &self.body)
    }

    pub fn call_id(&self) -> &str {
        self.headers.get("Call-ID").unwrap_or("")
    }

    pub fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.headers.get("CSeq")?)
    }

    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.headers.list("Via").first()?)
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.get("From")?)
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.get("To")?)
    }

    pub fn contact(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers.list("Contact").first()?)
    }
}

impl Response {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("SIP/2.0 {} {}\r\n", self.code, self.reason);
        write_message(&mut s, &self.headers, &self.body)
    }

    pub fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.headers.get("CSeq")?)
    }

    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.headers.list("Via").first()?)
    }

    /// A response to `req` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied; a To
    /// tag added when given and the request had none.
    pub fn to_request(req: &Request, code: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::new();
        // A response that may set up a dialog carries the request's Record-Route in order
        // (RFC 3261 §12.1.1), so the caller's in-dialog requests pass the same proxies.
        let dialog = req.method == Method::Invite && (101..300).contains(&code);
        for (n, v) in req.headers.iter() {
            if matches!(n, "Via" | "From" | "Call-ID" | "CSeq") || (dialog && n == "Record-Route") {
                headers.push(n, v);
            } else if n == "To" {
                let has_tag = NameAddr::parse(v).is_some_and(|a| a.tag().is_some());
                match to_tag {
                    Some(tag) if !has_tag && code > 100 => {
                        headers.push(n, format!("{v};tag={tag}"))
                    }
                    _ => headers.push(n, v),
                }
            }
        }
        Response {
            code,
            reason: reason.to_string(),
            headers,
            body: Vec::new(),
        }
    }
}

/// The standard reason phrase for codes the service sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A header parameter list `;a=b;c`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    fn parse(s: &str) -> Params {
        Params(
            s.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (
                        k.trim().to_string(),
                        Some(v.trim().trim_matches('"').to_string()),
                    ),
                    None => (p.to_string(), None),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_deref())
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn parse(v: &str) -> Option<Via> {
        let (proto, rest) = v.trim().split_once(|c: char| c.is_whitespace())?;
        let mut p = proto.split('/');
        let (name, version, transport) = (p.next()?, p.next()?, p.next()?);
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" || p.next().is_some()
        {
            return None;
        }
        let rest = rest.trim();
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (host, port) = split_host_port(sent_by.trim())?;
        Some(Via {
            transport: transport.trim().to_ascii_uppercase(),
            host,
            port,
            params: Params::parse(params),
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{h}]"), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s.to_string(), None)),
    }
}

/// A SIP URI `sip:user@host:port;params`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Uri {
    pub fn parse(s: &str) -> Option<Uri> {
        let (scheme, rest) = s.trim().split_once(':')?;
        let rest = rest.split('?').next().unwrap_or("");
        let (userhost, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (user, hostport) = match userhost.rsplit_once('@') {
            Some((u, h)) => (Some(u.split(':').next().unwrap_or(u).to_string()), h),
            None => (None, userhost),
        };
        let (host, port) = split_host_port(hostport)?;
        Some(Uri {
            scheme: scheme.to_ascii_lowercase(),
            user,
            host,
            port,
            params: Params::parse(params),
        })
    }
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact, Route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(v: &str) -> Option<NameAddr> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        if let Some(lt) = find_unquoted(v, '<') {
            let gt = v[lt..].find('>')? + lt;
            let display = v[..lt].trim().trim_matches('"').trim();
            Some(NameAddr {
                display: (!display.is_empty()).then(|| display.to_string()),
                uri: v[lt + 1..gt].trim().to_string(),
                params: Params::parse(v[gt + 1..].trim_start_matches(';')),
            })
        } else {
            // addr-spec form: everything after the first ';' is a header parameter.
            let (uri, params) = v.split_once(';').unwrap_or((v, ""));
            if uri.contains(char::is_whitespace) || !uri.contains(':') {
                return None;
            }
            Some(NameAddr {
                display: None,
                uri: uri.to_string(),
                params: Params::parse(params),
            })
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }

    pub fn user(&self) -> Option<String> {
        Uri::parse(&self.uri).and_then(|u| u.user)
    }
}

fn find_unquoted(s: &str, c: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if ch == c && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0;rport\r\n\
From: \"Alice, A\" <sip:alice@127.0.0.1:5061>;tag=abc\r\n\
To: <sip:echo@127.0.0.1:5060>\r\n\
Call-ID: 1-123@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length:   4\r\n\
\r\n\
v=0\r";

    fn req(s: &str) -> Request {
        match Message::parse(s.as_bytes()).unwrap() {
            Message::Request(r) => r,
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn parses_a_request_with_padded_content_length() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "sip:echo@127.0.0.1:5060");
        assert_eq!(r.body, b"v=0\r");
        assert_eq!(r.call_id(), "1-123@127.0.0.1");
        assert_eq!(r.cseq(), Some((1, Method::Invite)));
        let via = r.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK-1-0"));
        assert_eq!((via.host.as_str(), via.port), ("127.0.0.1", Some(5061)));
        assert_eq!(via.params.get("rport"), Some(None));
        let from = r.from().unwrap();
        assert_eq!(from.tag(), Some("abc"));
        assert_eq!(from.display.as_deref(), Some("Alice, A"));
        assert_eq!(from.user().as_deref(), Some("alice"));
        assert_eq!(r.to().unwrap().tag(), None);
    }

    #[test]
    fn compact_headers_and_lower_case_names_are_understood() {
        let m = "OPTIONS sip:x@h SIP/2.0\r\nv: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\nf: <sip:a@h>;tag=1\r\n\
t: sip:x@h\r\ni: cid\r\ncseq: 2 OPTIONS\r\nl: 0\r\n\r\n";
        let r = req(m);
        assert_eq!(r.call_id(), "cid");
        assert_eq!(r.headers.get("Content-Length"), Some("0"));
        assert_eq!(r.headers.get("call-id"), Some("cid"));
        assert_eq!(r.to().unwrap().uri, "sip:x@h");
    }

    #[test]
    fn folded_header_lines_are_joined() {
        let m = "OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h:1\r\n ;branch=z9hG4bKfold\r\nFrom: <sip:a@h>;tag=1\r\n\
To: <sip:x@h>\r\nCall-ID: c\r\nCSeq: 1\r\n\tOPTIONS\r\nContent-Length: 0\r\n\r\n";
        let r = req(m);
        assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKfold"));
        assert_eq!(r.cseq(), Some((1, Method::Options)));
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let m = INVITE.replace("\r\n", "\n");
        let r = req(&m);
        assert_eq!(r.method, Method::Invite);
    }

    #[test]
    fn missing_mandatory_headers_are_reported_with_the_request() {
        for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
            let m: String = INVITE
                .split("\r\n")
                .filter(|l| !l.starts_with(&format!("{h}:")))
                .collect::<Vec<_>>()
                .join("\r\n");
            let err = Message::parse(m.as_bytes()).unwrap_err();
            assert_eq!(err.error, ParseError::MissingHeader(h));
            assert!(err.request.is_some(), "{h}: headers kept for the 400");
        }
    }

    #[test]
    fn content_length_beyond_the_body_is_an_error() {
        let m = INVITE.replace("Content-Length:   4", "Content-Length: 400");
        assert_eq!(
            Message::parse(m.as_bytes()).unwrap_err().error,
            ParseError::BodyTruncated
        );
        let m = INVITE.replace("Content-Length:   4", "Content-Length: x");
        assert_eq!(
            Message::parse(m.as_bytes()).unwrap_err().error,
            ParseError::BadHeaderValue("Content-Length")
        );
    }

    #[test]
    fn cseq_method_must_match() {
        let m = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        assert_eq!(
            Message::parse(m.as_bytes()).unwrap_err().error,
            ParseError::CSeqMismatch
        );
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for g in [
            &b""[..],
            b"\r\n\r\n",
            b"hello",
            b"INVITE sip:x SIP/2.0",
            b"INVITE  SIP/2.0\r\n\r\n",
            b"SIP/2.0 99 Low\r\n\r\n",
            b"SIP/2.0 abc OK\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nNoColon\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\n\xff\xfe: x\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: nonsense\r\nFrom: <sip:a@b>\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [::1\r\nFrom: <sip:a@b>\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h:99999\r\nFrom: <sip:a@b>\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
        ] {
            assert!(Message::parse(g).is_err(), "{:?}", String::from_utf8_lossy(g));
        }
        let huge = vec![b'a'; MAX_MESSAGE + 10];
        assert_eq!(
            Message::parse(&huge).unwrap_err().error,
            ParseError::TooLarge
        );
    }

    #[test]
    fn response_copies_routing_headers_and_adds_to_tag() {
        let r = req(INVITE);
        let resp = Response::to_request(&r, 200, "OK", Some("srv1"));
        let bytes = String::from_utf8(resp.to_bytes()).unwrap();
        assert!(bytes.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(bytes.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0;rport\r\n"));
        assert!(bytes.contains("To: <sip:echo@127.0.0.1:5060>;tag=srv1\r\n"));
        assert!(bytes.contains("CSeq: 1 INVITE\r\n"));
        assert!(bytes.ends_with("Content-Length: 0\r\n\r\n"));
        let trying = Response::to_request(&r, 100, "Trying", Some("srv1"));
        assert!(
            !String::from_utf8(trying.to_bytes())
                .unwrap()
                .contains("tag=srv1")
        );
        // Round trip.
        let Message::Response(back) = Message::parse(&resp.to_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(back.code, 200);
        assert_eq!(back.cseq(), Some((1, Method::Invite)));
    }

    #[test]
    fn lists_split_at_top_level_commas_only() {
        assert_eq!(
            split_list("<sip:a@b;lr>, \"x, y\" <sip:c@d>,sip:e@f"),
            vec!["<sip:a@b;lr>", "\"x, y\" <sip:c@d>", "sip:e@f"]
        );
        let m = INVITE.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0;rport",
            "Via: SIP/2.0/UDP p:5070;branch=z9hG4bKp, SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1",
        );
        assert_eq!(req(&m).top_via().unwrap().branch(), Some("z9hG4bKp"));
    }

    #[test]
    fn uris_parse() {
        let u = Uri::parse("sip:echo@127.0.0.1:5060;transport=udp").unwrap();
        assert_eq!(u.user.as_deref(), Some("echo"));
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", Some(5060)));
        assert_eq!(u.params.get("transport"), Some(Some("udp")));
        let u = Uri::parse("sip:[::1]:5070").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", Some(5070)));
        let u = Uri::parse("sip:+15551234:pw@h").unwrap();
        assert_eq!(u.user.as_deref(), Some("+15551234"));
    }
}
