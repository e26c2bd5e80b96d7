//! chan_websocket's control messages (JSON format, `f(json)`): the commands we send and the
//! events Asterisk sends, as pure functions. Message names and fields follow the driver in
//! Asterisk 23.4.1 (`channels/chan_websocket.c`, the version tested).

use serde::Deserialize;

/// chan_websocket ignores (and only logs) a text message longer than this.
pub const MAX_TEXT: usize = 128;

/// A command to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Answer,
    Hangup,
    /// Barge-in: drop all queued media.
    FlushMedia,
    /// `MEDIA_MARK_PROCESSED` with this id comes back when playout reaches this point.
    MarkMedia(&'a str),
    GetStatus,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("a control message of {0} bytes is over chan_websocket's 128-byte limit")]
    TooLong(usize),
}

impl Command<'_> {
    /// The text frame for the command; never over [`MAX_TEXT`] bytes (Asterisk would ignore
    /// it silently).
    pub fn to_json(self) -> Result<String, CommandError> {
        let text = match self {
            Command::Answer => r#"{"command":"ANSWER"}"#.to_string(),
            Command::Hangup => r#"{"command":"HANGUP"}"#.to_string(),
            Command::FlushMedia => r#"{"command":"FLUSH_MEDIA"}"#.to_string(),
            Command::GetStatus => r#"{"command":"GET_STATUS"}"#.to_string(),
            Command::MarkMedia(id) => serde_json::json!({
                "command": "MARK_MEDIA",
                "correlation_id": id,
            })
            .to_string(),
        };
        if text.len() > MAX_TEXT {
            return Err(CommandError::TooLong(text.len()));
        }
        Ok(text)
    }
}

/// An event from the driver (JSON control format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    MediaStart {
        channel_id: String,
        format: String,
        optimal_frame_size: usize,
        ptime: u32,
    },
    /// The queue reached 900 frames: stop sending until [`Event::MediaXon`].
    MediaXoff,
    MediaXon,
    QueueDrained,
    MarkProcessed(String),
    DtmfEnd(char),
    Status {
        queue_length: u64,
    },
    Error(String),
    /// An event this client does not use.
    Other(String),
}

#[derive(Deserialize)]
struct Raw {
    event: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    optimal_frame_size: usize,
    #[serde(default)]
    ptime: u32,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    digit: Option<String>,
    #[serde(default)]
    queue_length: u64,
    #[serde(default)]
    error_text: Option<String>,
}

/// Parses one text frame; `None` for anything that is not a JSON event.
pub fn parse_event(text: &str) -> Option<Event> {
    let raw: Raw = serde_json::from_str(text).ok()?;
    Some(match raw.event.as_str() {
        "MEDIA_START" => Event::MediaStart {
            channel_id: raw.channel_id,
            format: raw.format,
            optimal_frame_size: raw.optimal_frame_size,
            ptime: raw.ptime,
        },
        "MEDIA_XOFF" => Event::MediaXoff,
        "MEDIA_XON" => Event::MediaXon,
        "QUEUE_DRAINED" => Event::QueueDrained,
        "MEDIA_MARK_PROCESSED" => Event::MarkProcessed(raw.correlation_id.unwrap_or_default()),
        "DTMF_END" => {
            let digit = raw.digit?;
            let mut chars = digit.chars();
            let d = chars.next()?;
            if chars.next().is_some() {
                return None;
            }
            Event::DtmfEnd(d)
        }
        "STATUS" => Event::Status {
            queue_length: raw.queue_length,
        },
        "ERROR" => Event::Error(raw.error_text.unwrap_or_default()),
        _ => Event::Other(raw.event),
    })
}

/// The `transport_data` we give externalMedia. Only `f(json)` or `f(plain-text)` may ever be
/// sent: any other `f(...)` crashes Asterisk 23.4.1 (fixed in 23.5.0).
pub const TRANSPORT_DATA: &str = "f(json)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_json_and_short() {
        assert_eq!(
            Command::FlushMedia.to_json().unwrap(),
            r#"{"command":"FLUSH_MEDIA"}"#
        );
        let mark = Command::MarkMedia("p-12").to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&mark).unwrap();
        assert_eq!(v["command"], "MARK_MEDIA");
        assert_eq!(v["correlation_id"], "p-12");
        let long = "x".repeat(120);
        assert_eq!(
            Command::MarkMedia(&long).to_json(),
            Err(CommandError::TooLong(long.len() + 44))
        );
    }

    #[test]
    fn media_start_from_a_live_asterisk_parses() {
        // The example in the chan_websocket summary, as a 23.4.1 build sent it.
        let text = r#"{"event":"MEDIA_START","connection_id":"4cb7f494-d62b-46a5-ba49-9595d1aca129","channel":"WebSocket/INCOMING/0x5620cd1e2c70","channel_id":"1795297301.2","format":"ulaw","optimal_frame_size":160,"ptime":20,"channel_variables":{"MEDIA_WEBSOCKET_CONNECTION_ID":"4cb7f494-d62b-46a5-ba49-9595d1aca129","MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE":"160"}}"#;
        assert_eq!(
            parse_event(text),
            Some(Event::MediaStart {
                channel_id: "1795297301.2".into(),
                format: "ulaw".into(),
                optimal_frame_size: 160,
                ptime: 20,
            })
        );
    }

    #[test]
    fn events_parse_and_garbage_does_not() {
        assert_eq!(
            parse_event(r##"{"event":"DTMF_END","channel_id":"1.2","digit":"#"}"##),
            Some(Event::DtmfEnd('#'))
        );
        assert_eq!(
            parse_event(r#"{"event":"DTMF_END","channel_id":"1.2","digit":"12"}"#),
            None
        );
        assert_eq!(
            parse_event(r#"{"event":"MEDIA_XOFF","channel_id":"1.2"}"#),
            Some(Event::MediaXoff)
        );
        assert_eq!(
            parse_event(
                r#"{"event":"MEDIA_MARK_PROCESSED","channel_id":"1.2","correlation_id":"a"}"#
            ),
            Some(Event::MarkProcessed("a".into()))
        );
        assert_eq!(
            parse_event(r#"{"event":"NEW_THING","channel_id":"1.2"}"#),
            Some(Event::Other("NEW_THING".into()))
        );
        assert_eq!(parse_event("MEDIA_XOFF"), None);
        assert_eq!(parse_event("{"), None);
    }
}
