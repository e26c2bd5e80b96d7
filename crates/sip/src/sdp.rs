//! SDP offer/answer for the audio stream (RFC 3264, RFC 4566). Offers are parsed with
//! `sdp-types`; answers are short and written directly (and parsed back in tests).

use std::net::IpAddr;

use topup_media::g711::Codec;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("no audio stream in the offer")]
    NoAudio,
    #[error("no common codec (we take PCMU or PCMA)")]
    NoCommonCodec,
    #[error("no usable connection address for the audio stream")]
    NoAddress,
}

/// Media direction attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The answer's direction for an offer's (RFC 3264 §6.1).
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether we may send media in this direction (our side's view).
    pub fn we_send(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

/// What was agreed for the audio stream, seen from our side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Where the caller wants our RTP (before symmetric-RTP latching).
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    pub codec: Codec,
    /// The caller's telephone-event payload type, if it offered one at 8 kHz.
    pub telephone_event: Option<u8>,
    /// Our direction.
    pub direction: Direction,
}

/// Reads an offer and picks the first codec in the caller's order that we support
/// (`allowed` lists the codecs we accept).
pub fn negotiate(body: &[u8], allowed: &[Codec]) -> Result<Negotiated, SdpError> {
    let session =
        sdp_types::Session::parse(body).map_err(|e| SdpError::Malformed(e.to_string()))?;
    let media = session
        .medias
        .iter()
        .find(|m| m.media == "audio" && m.port != 0 && m.proto.starts_with("RTP/AVP"))
        .ok_or(SdpError::NoAudio)?;

    let rtpmaps: Vec<sdp_types::RtpMap> = media
        .attributes_typed::<sdp_types::RtpMap>()
        .filter_map(Result::ok)
        .collect();
    let mut codec = None;
    let mut telephone_event = None;
    for fmt in media.fmt.split_whitespace() {
        let Ok(pt) = fmt.parse::<u8>() else { continue };
        let map = rtpmaps.iter().find(|m| m.payload_type == pt);
        let found = match map {
            Some(m) if m.clock_rate == 8000 => {
                if m.encoding_name.eq_ignore_ascii_case("telephone-event") {
                    telephone_event.get_or_insert(pt);
                    None
                } else {
                    Codec::from_name(&m.encoding_name)
                }
            }
            Some(_) => None,
            // Static payload types need no rtpmap (RFC 3551).
            None => Codec::from_payload_type(pt),
        };
        if let Some(c) = found
            && codec.is_none()
            && allowed.contains(&c)
        {
            codec = Some((c, pt));
        }
    }
    let (codec, _pt) = codec.ok_or(SdpError::NoCommonCodec)?;

    let conn = media
        .connections
        .first()
        .or(session.connection.as_ref())
        .ok_or(SdpError::NoAddress)?;
    let addr_text = conn.connection_address.split('/').next().unwrap_or("");
    let remote_addr: IpAddr = addr_text.parse().map_err(|_| SdpError::NoAddress)?;

    let attr = |name: &str| media.has_attribute(name) || session.has_attribute(name);
    let offered = if attr("inactive") {
        Direction::Inactive
    } else if attr("sendonly") {
        Direction::SendOnly
    } else if attr("recvonly") {
        Direction::RecvOnly
    } else {
        Direction::SendRecv
    };
    // RFC 2543-style hold: c=0.0.0.0 means "do not send to me".
    let direction = if remote_addr.is_unspecified() {
        match offered.reverse() {
            Direction::SendRecv => Direction::RecvOnly,
            Direction::SendOnly => Direction::Inactive,
            d => d,
        }
    } else {
        offered.reverse()
    };
    Ok(Negotiated {
        remote_addr,
        remote_port: media.port,
        codec,
        telephone_event,
        direction,
    })
}

/// Writes our answer. `version` must grow with each new answer in the session (re-INVITE).
pub fn write_answer(
    n: &Negotiated,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    version: u64,
) -> Vec<u8> {
    write_session(
        &[n.codec],
        n.telephone_event,
        n.direction,
        local_ip,
        local_port,
        (session_id, version),
    )
}

/// The payload type we offer telephone-event on when we make the offer (a common choice).
pub const OFFERED_TELEPHONE_EVENT: u8 = 101;

/// Writes our offer, for a call whose INVITE came without one (late offer, RFC 3261
/// §13.2.1): every codec we take, in our order, and telephone-event; sendrecv. The answer
/// comes in the ACK and is read with [`negotiate`].
pub fn write_offer(
    codecs: &[Codec],
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    version: u64,
) -> Vec<u8> {
    write_session(
        codecs,
        Some(OFFERED_TELEPHONE_EVENT),
        Direction::SendRecv,
        local_ip,
        local_port,
        (session_id, version),
    )
}

fn write_session(
    codecs: &[Codec],
    telephone_event: Option<u8>,
    direction: Direction,
    local_ip: IpAddr,
    local_port: u16,
    (session_id, version): (u64, u64),
) -> Vec<u8> {
    let ip_kind = if local_ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut fmts = vec![];
    let mut attrs = String::new();
    for c in codecs {
        fmts.push(c.payload_type().to_string());
        attrs.push_str(&format!(
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.name()
        ));
    }
    if let Some(te) = telephone_event {
        fmts.push(te.to_string());
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=topup-ivr {session_id} {version} IN {ip_kind} {local_ip}\r\ns=topup-ivr\r\n\
c=IN {ip_kind} {local_ip}\r\nt=0 0\r\nm=audio {local_port} RTP/AVP {}\r\n{attrs}a=ptime:20\r\na={}\r\n",
        fmts.join(" "),
        direction.as_str()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sipp's default offer with telephone-event on payload type 96 (as sipp's play_dtmf sends).
    const SIPP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 96\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n";

    #[test]
    fn picks_the_callers_first_codec_and_its_telephone_event_type() {
        let n = negotiate(SIPP_OFFER.as_bytes(), &Codec::ALL).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.telephone_event, Some(96));
        assert_eq!(n.remote_port, 6000);
        assert_eq!(n.direction, Direction::SendRecv);
        let only_alaw = negotiate(SIPP_OFFER.as_bytes(), &[Codec::Pcma]).unwrap();
        assert_eq!(only_alaw.codec, Codec::Pcma);
    }

    #[test]
    fn static_payload_types_need_no_rtpmap() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 0\r\n";
        let n = negotiate(offer.as_bytes(), &Codec::ALL).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.telephone_event, None);
    }

    #[test]
    fn hold_offers_get_the_reverse_direction() {
        let send_only =
            SIPP_OFFER.replace("a=fmtp:96 0-15\r\n", "a=fmtp:96 0-15\r\na=sendonly\r\n");
        assert_eq!(
            negotiate(send_only.as_bytes(), &Codec::ALL)
                .unwrap()
                .direction,
            Direction::RecvOnly
        );
        let old_hold = SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            negotiate(old_hold.as_bytes(), &Codec::ALL)
                .unwrap()
                .direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn unusable_offers_are_errors() {
        let g729 = SIPP_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 18").replace(
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
            "a=rtpmap:18 G729/8000\r\n",
        );
        assert_eq!(
            negotiate(g729.as_bytes(), &Codec::ALL),
            Err(SdpError::NoCommonCodec)
        );
        let video = SIPP_OFFER.replace("m=audio", "m=video");
        assert_eq!(
            negotiate(video.as_bytes(), &Codec::ALL),
            Err(SdpError::NoAudio)
        );
        assert!(matches!(
            negotiate(b"garbage", &Codec::ALL),
            Err(SdpError::Malformed(_))
        ));
        let no_c = SIPP_OFFER.replace("c=IN IP4 127.0.0.1\r\n", "");
        assert_eq!(
            negotiate(no_c.as_bytes(), &Codec::ALL),
            Err(SdpError::NoAddress)
        );
    }

    #[test]
    fn answer_is_valid_sdp_with_the_callers_event_type() {
        let n = negotiate(SIPP_OFFER.as_bytes(), &Codec::ALL).unwrap();
        let a = write_answer(&n, "127.0.0.1".parse().unwrap(), 20000, 42, 1);
        let s = sdp_types::Session::parse(&a).unwrap();
        let m = &s.medias[0];
        assert_eq!(m.port, 20000);
        assert_eq!(m.fmt, "0 96");
        let maps: Vec<_> = m
            .attributes_typed::<sdp_types::RtpMap>()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(maps[1].payload_type, 96);
        assert_eq!(maps[1].encoding_name, "telephone-event");
        assert!(m.has_attribute("sendrecv"));
        // And our own answer is acceptable as an offer, too.
        assert_eq!(negotiate(&a, &Codec::ALL).unwrap().codec, Codec::Pcmu);
    }

    #[test]
    fn our_offer_lists_every_codec_we_take_and_an_answer_picks_from_it() {
        let o = write_offer(
            &[Codec::Pcma, Codec::Pcmu],
            "127.0.0.1".parse().unwrap(),
            20002,
            42,
            1,
        );
        let s = sdp_types::Session::parse(&o).unwrap();
        let m = &s.medias[0];
        assert_eq!((m.port, m.fmt.as_str()), (20002, "8 0 101"));
        assert!(m.has_attribute("sendrecv"));
        // Read back as an offer: our first codec, our event type.
        let n = negotiate(&o, &Codec::ALL).unwrap();
        assert_eq!((n.codec, n.telephone_event), (Codec::Pcma, Some(101)));
        // The caller's answer (its own event type, as RFC 3264 allows) decides.
        let answer = SIPP_OFFER.replace("RTP/AVP 0 8 96", "RTP/AVP 0 96");
        let n = negotiate(answer.as_bytes(), &[Codec::Pcma, Codec::Pcmu]).unwrap();
        assert_eq!(
            (n.codec, n.telephone_event, n.remote_port),
            (Codec::Pcmu, Some(96), 6000)
        );
    }
}
