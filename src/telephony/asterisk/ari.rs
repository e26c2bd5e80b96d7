//! The ARI REST calls the adapter makes (tested against Asterisk 23.4.1; swagger in
//! `tests/specs/asterisk-ari/`), and the events it reads.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::AsteriskConfig;

#[derive(Debug, thiserror::Error)]
pub enum AriError {
    #[error("Asterisk unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("Asterisk answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error("Asterisk's answer to {0} lacks what it should carry")]
    Malformed(String),
}

impl AriError {
    /// The channel or bridge is gone (404), e.g. the caller hung up meanwhile.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AriError::Status { status: 404, .. })
    }
}

/// Asterisk's HTTP server serves at most `sessionlimit` connections at once (http.conf, 100 by
/// default) and closes any further one unanswered; a media websocket whose handshake meets the
/// limit fails, and its call with it. A connection counts from its accept until Asterisk's
/// thread for it sees it closed, ARI's REST connections while they wait for the next request
/// (15 s, `session_keep_alive`). Under a storm of call set-ups each concurrent REST request
/// opened one more connection, and the ones over the idle pool were closed and opened again
/// (on a loaded machine Asterisk counts a closed one for a while). The service keeps its use
/// bounded and steady: at most this many requests and media handshakes at once (more wait
/// their turn), ...
pub const MAX_HTTP_AT_ONCE: usize = 16;
/// ... its REST connections kept open for the next request rather than closed and reopened
/// (so at most 2 × 16 connections at once, with the events websocket one more), ...
const MAX_IDLE: usize = MAX_HTTP_AT_ONCE;
/// ... and closed before Asterisk would close them (a request sent on a connection Asterisk is
/// closing fails).
const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// A REST client for one Asterisk.
#[derive(Clone)]
pub struct Ari {
    http: reqwest::Client,
    /// Turns on Asterisk's HTTP server ([`MAX_HTTP_AT_ONCE`]).
    turns: std::sync::Arc<tokio::sync::Semaphore>,
    /// `http://host:port/ari`
    base: String,
    username: String,
    password: String,
}

/// A websocket to Asterisk (ARI's events, chan_websocket's media).
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub type WsError = tokio_tungstenite::tungstenite::Error;

/// Asterisk closed the connection before answering the handshake (or refused or reset it):
/// nothing reached chan_websocket, so trying again is safe.
fn unanswered(e: &WsError) -> bool {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    matches!(
        e,
        WsError::Protocol(ProtocolError::HandshakeIncomplete)
            | WsError::Io(_)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed
    )
}

/// The parts of ARI's `Channel` model the adapter reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub caller: CallerId,
    #[serde(default)]
    pub dialplan: Option<DialplanCep>,
    #[serde(default)]
    pub channelvars: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CallerId {
    #[serde(default)]
    pub number: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DialplanCep {
    #[serde(default)]
    pub exten: String,
}

impl Channel {
    fn var(&self, name: &str) -> Option<&str> {
        self.channelvars.as_ref()?.get(name)?.as_str()
    }
}

/// The events the adapter acts on (everything else is ignored).
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    StasisStart {
        #[serde(default)]
        args: Vec<String>,
        channel: Channel,
    },
    StasisEnd {
        channel: Channel,
    },
    ChannelDestroyed {
        #[serde(default)]
        cause: i64,
        #[serde(default)]
        cause_txt: String,
        channel: Channel,
    },
    ChannelDtmfReceived {
        digit: String,
        channel: Channel,
    },
    #[serde(other)]
    Other,
}

impl Ari {
    pub fn new(cfg: &AsteriskConfig) -> Ari {
        Ari {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .pool_max_idle_per_host(MAX_IDLE)
                .pool_idle_timeout(IDLE_FOR)
                .build()
                .unwrap_or_default(),
            turns: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_AT_ONCE)),
            base: format!("{}/ari", cfg.url),
            username: cfg.username.clone(),
            password: cfg.password.expose().to_string(),
        }
    }

    /// The events websocket URL (`ws://host:port/ari/events?app=NAME`); credentials go in
    /// the Authorization header, never in the URL (it is logged by proxies).
    pub fn events_url(&self, app: &str) -> String {
        format!("{}/events?app={app}", ws_base(&self.base))
    }

    /// chan_websocket's media URL on Asterisk's HTTP server for a connection id.
    pub fn media_url(&self, connection_id: &str) -> String {
        let http = self.base.trim_end_matches("/ari");
        format!("{}/media/{connection_id}", ws_base(http))
    }

    /// Opens chan_websocket's media connection for `connection_id` (sub-protocol `media`).
    /// The handshake takes a turn on Asterisk's HTTP server; one that Asterisk closed
    /// unanswered (its session limit reached by other clients) is tried again, twice.
    pub async fn connect_media(&self, connection_id: &str) -> Result<WsStream, WsError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut tries = 0;
        loop {
            let mut req = self.media_url(connection_id).into_client_request()?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static("media"),
            );
            let r = {
                let _turn = self.turns.acquire().await;
                tokio_tungstenite::connect_async(req).await
            };
            match r {
                Ok((ws, _)) => return Ok(ws),
                Err(e) if tries < 2 && unanswered(&e) => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "media websocket not answered: again");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `Authorization: Basic ...` for ARI.
    pub fn authorization(&self) -> String {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        format!("Basic {token}")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<serde_json::Value>, AriError> {
        let what = format!("{method} {path}");
        let _turn = self.turns.acquire().await;
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.username, Some(&self.password))
            .query(query)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(AriError::Status {
                status,
                what,
                message,
            });
        }
        if body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|_| AriError::Malformed(what))
    }

    pub async fn answer(&self, channel: &str) -> Result<(), AriError> {
        self.call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/answer"),
            &[],
        )
        .await
        .map(drop)
    }

    /// Hangs a channel up; `reason` is one of the swagger's values (`normal`, `congestion`,
    /// `unallocated`, ...).
    pub async fn hangup(&self, channel: &str, reason: &str) -> Result<(), AriError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/channels/{channel}"),
            &[("reason", reason)],
        )
        .await
        .map(drop)
    }

    /// Whether a channel still exists (after the events connection was lost).
    pub async fn channel_exists(&self, channel: &str) -> Result<bool, AriError> {
        match self
            .call(reqwest::Method::GET, &format!("/channels/{channel}"), &[])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// externalMedia over chan_websocket with Asterisk as the server: returns the connection
    /// id to open `/media/<id>` with.
    pub async fn external_media_websocket(
        &self,
        app: &str,
        channel_id: &str,
        format: &str,
    ) -> Result<String, AriError> {
        let ch = self
            .external_media(&[
                ("app", app),
                ("channelId", channel_id),
                ("transport", "websocket"),
                ("encapsulation", "none"),
                ("connection_type", "server"),
                ("format", format),
                ("transport_data", super::chan_websocket::TRANSPORT_DATA),
            ])
            .await?;
        ch.var("MEDIA_WEBSOCKET_CONNECTION_ID")
            .map(str::to_string)
            .ok_or_else(|| AriError::Malformed("externalMedia (no connection id)".into()))
    }

    /// externalMedia RTP over UDP to `ours`: returns where Asterisk receives the RTP.
    pub async fn external_media_rtp(
        &self,
        app: &str,
        channel_id: &str,
        ours: SocketAddr,
        format: &str,
    ) -> Result<SocketAddr, AriError> {
        let host = ours.to_string();
        let ch = self
            .external_media(&[
                ("app", app),
                ("channelId", channel_id),
                ("external_host", &host),
                ("transport", "udp"),
                ("encapsulation", "rtp"),
                ("format", format),
            ])
            .await?;
        let addr = ch.var("UNICASTRTP_LOCAL_ADDRESS");
        let port = ch.var("UNICASTRTP_LOCAL_PORT");
        match (addr, port) {
            (Some(a), Some(p)) => format!("{a}:{p}")
                .parse()
                .map_err(|_| AriError::Malformed("externalMedia (RTP address)".into())),
            _ => Err(AriError::Malformed(
                "externalMedia (no UNICASTRTP_LOCAL_ADDRESS/PORT)".into(),
            )),
        }
    }

    async fn external_media(&self, query: &[(&str, &str)]) -> Result<Channel, AriError> {
        let v = self
            .call(reqwest::Method::POST, "/channels/externalMedia", query)
            .await?
            .ok_or_else(|| AriError::Malformed("externalMedia".into()))?;
        serde_json::from_value(v).map_err(|_| AriError::Malformed("externalMedia".into()))
    }

    /// Originates a channel to `endpoint` into the application with our own id; it enters
    /// with `StasisStart` once answered, or is destroyed (busy, no answer) with a cause.
    pub async fn originate(
        &self,
        endpoint: &str,
        app: &str,
        channel_id: &str,
        caller_id: &str,
        timeout_secs: &str,
    ) -> Result<(), AriError> {
        self.call(
            reqwest::Method::POST,
            "/channels",
            &[
                ("endpoint", endpoint),
                ("app", app),
                ("appArgs", "outbound"),
                ("channelId", channel_id),
                ("callerId", caller_id),
                ("timeout", timeout_secs),
            ],
        )
        .await
        .map(drop)
    }

    /// A mixing bridge with our own id (so it can be found and removed after a reconnect).
    pub async fn create_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        self.call(
            reqwest::Method::POST,
            &format!("/bridges/{bridge_id}"),
            &[("type", "mixing")],
        )
        .await
        .map(drop)
    }

    pub async fn add_channels(&self, bridge_id: &str, channels: &[&str]) -> Result<(), AriError> {
        let list = channels.join(",");
        self.call(
            reqwest::Method::POST,
            &format!("/bridges/{bridge_id}/addChannel"),
            &[("channel", &list)],
        )
        .await
        .map(drop)
    }

    pub async fn destroy_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/bridges/{bridge_id}"),
            &[],
        )
        .await
        .map(drop)
    }

    pub async fn set_variable(
        &self,
        channel: &str,
        name: &str,
        value: &str,
    ) -> Result<(), AriError> {
        self.call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/variable"),
            &[("variable", name), ("value", value)],
        )
        .await
        .map(drop)
    }

    /// Leaves Stasis and goes on in the dialplan at `context,extension,1`.
    pub async fn continue_in_dialplan(
        &self,
        channel: &str,
        context: &str,
        extension: &str,
    ) -> Result<(), AriError> {
        self.call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/continue"),
            &[
                ("context", context),
                ("extension", extension),
                ("priority", "1"),
            ],
        )
        .await
        .map(drop)
    }
}

fn ws_base(http: &str) -> String {
    if let Some(rest) = http.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = http.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        http.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ari(url: &str) -> Ari {
        Ari::new(&AsteriskConfig {
            url: url.into(),
            app: "topup".into(),
            username: "u".into(),
            password: crate::config::Secret::new("p"),
            media: crate::config::AriMedia::Websocket,
            codec: crate::media::g711::Codec::Pcmu,
            escalation_context: "agents".into(),
            calling_endpoint: None,
        })
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        let a = ari("http://10.0.0.1:8088");
        assert_eq!(
            a.events_url("topup"),
            "ws://10.0.0.1:8088/ari/events?app=topup"
        );
        assert_eq!(a.media_url("abc"), "ws://10.0.0.1:8088/media/abc");
        let a = ari("https://pbx.example.com:8089");
        assert_eq!(a.media_url("x"), "wss://pbx.example.com:8089/media/x");
        assert_eq!(a.authorization(), "Basic dTpw");
    }

    #[test]
    fn events_parse_from_swagger_shaped_json() {
        let ev: Event = serde_json::from_str(
            r#"{"type":"StasisStart","application":"topup","timestamp":"2026-01-01T00:00:00.000+0000",
                "args":[],"channel":{"id":"1.1","name":"PJSIP/alice-00000001","state":"Up",
                "protocol_id":"x","caller":{"name":"","number":"+15551230000"},
                "connected":{"name":"","number":""},"accountcode":"",
                "dialplan":{"context":"from-caller","exten":"recharge","priority":2,"app_name":"Stasis","app_data":"topup"},
                "creationtime":"2026-01-01T00:00:00.000+0000","language":"en"}}"#,
        )
        .unwrap();
        match ev {
            Event::StasisStart { channel, .. } => {
                assert_eq!(channel.caller.number, "+15551230000");
                assert_eq!(channel.dialplan.unwrap().exten, "recharge");
            }
            other => panic!("{other:?}"),
        }
        let ev: Event =
            serde_json::from_str(r#"{"type":"PlaybackStarted","application":"topup"}"#).unwrap();
        assert!(matches!(ev, Event::Other));
    }
}
