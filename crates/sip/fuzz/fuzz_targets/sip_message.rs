//! A datagram on the SIP port: the parser never panics, whatever it accepts can be read
//! through every accessor, and the endpoint (transactions, dialogs) takes it, and a second
//! copy of it, without panicking.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topup_sip::endpoint::{Endpoint, EndpointConfig};
use topup_sip::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        match &m {
            Message::Request(r) => {
                let _ = (
                    r.call_id(),
                    r.cseq(),
                    r.top_via(),
                    r.from(),
                    r.to(),
                    r.contact(),
                );
                let _ = r.to_bytes();
            }
            Message::Response(r) => {
                let _ = (r.cseq(), r.top_via());
                let _ = r.to_bytes();
            }
        }
    }
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut ep = Endpoint::new(
        EndpointConfig {
            local_addr: local,
            user_agent: "fuzz".into(),
            tsx: Default::default(),
        },
        1,
    );
    let t0 = Instant::now();
    ep.handle_datagram(t0, peer, data);
    ep.handle_datagram(t0 + Duration::from_millis(1), peer, data);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    ep.handle_timeout(t0 + Duration::from_secs(40));
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
});
