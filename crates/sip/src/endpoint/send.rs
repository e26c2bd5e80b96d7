//! Building and sending responses and in-dialog requests.

use super::*;

impl Endpoint {
    pub(super) fn random_token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    /// A response to `req`, with Via `received`/`rport` filled in (RFC 3581) and our Server.
    pub(super) fn build_response(
        &self,
        from: SocketAddr,
        req: &Request,
        code: u16,
        to_tag: Option<&str>,
    ) -> Response {
        let mut resp = Response::to_request(req, code, reason_phrase(code), to_tag);
        if let Some(top) = resp.headers.get("Via").map(String::from) {
            let parts = crate::message::split_list(&top);
            if let Some(first) = parts.first()
                && let Some(via) = Via::parse(first)
            {
                let mut v = first.to_string();
                if via.host.parse::<IpAddr>().ok() != Some(from.ip())
                    && via.params.get("received").is_none()
                {
                    v.push_str(&format!(";received={}", from.ip()));
                }
                if via.params.get("rport") == Some(None) {
                    v = v.replacen(";rport", &format!(";rport={}", from.port()), 1);
                }
                let mut all = vec![v];
                all.extend(parts[1..].iter().map(|s| s.to_string()));
                let mut headers = Headers::new();
                let mut replaced = false;
                for (n, val) in resp.headers.iter() {
                    if n == "Via" && !replaced {
                        headers.push(n, all.join(", "));
                        replaced = true;
                    } else {
                        headers.push(n, val);
                    }
                }
                resp.headers = headers;
            }
        }
        resp.headers.push("Server", self.cfg.user_agent.clone());
        resp
    }

    /// A response to the call's current INVITE, with our tag.
    pub(super) fn response_for(&self, call: CallHandle, code: u16) -> Response {
        let d = &self.calls[&call];
        self.build_response(d.peer, &d.invite, code, Some(&d.local_tag))
    }

    pub(super) fn add_contact(&self, resp: &mut Response) {
        resp.headers
            .push("Contact", format!("<sip:ivr@{}>", self.cfg.local_addr));
    }

    pub(super) fn send_2xx(&mut self, now: Instant, call: CallHandle, sdp: Vec<u8>) {
        let mut resp = self.response_for(call, 200);
        self.add_contact(&mut resp);
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = sdp;
        let bytes = resp.to_bytes();
        let cseq = resp.cseq().map(|c| c.0).unwrap_or(0);
        self.send_invite_response(now, call, resp);
        let t1 = self.cfg.tsx.t1;
        let give_up = now + self.cfg.tsx.timeout();
        if let Some(d) = self.calls.get_mut(&call) {
            d.ok_retransmit = Some(OkRetransmit {
                bytes,
                cseq,
                next: now + t1,
                interval: t1,
                give_up,
            });
        }
        self.schedule(TimerOwner::Dialog(call));
    }

    pub(super) fn send_invite_response(&mut self, now: Instant, call: CallHandle, resp: Response) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        let key = d.invite_key.clone();
        let cfg = self.cfg.tsx;
        if let Some((tsx, _)) = self.server_invite.get_mut(&key)
            && let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes())
        {
            self.transmits.push_back(Transmit {
                to: tsx.peer,
                payload: bytes,
            });
        }
        if resp.code >= 200 {
            let d = &self.calls[&call];
            self.by_invite.remove(&(
                d.call_id.clone(),
                d.remote_tag.clone(),
                d.invite.cseq().map(|c| c.0).unwrap_or(0),
            ));
        }
        self.schedule(TimerOwner::Server(key));
    }

    pub(super) fn respond_non_invite(
        &mut self,
        now: Instant,
        to: SocketAddr,
        key: TsxKey,
        resp: Response,
    ) {
        let cfg = self.cfg.tsx;
        let tsx = self
            .server_other
            .entry(key.clone())
            .or_insert_with(|| ServerNonInviteTsx::new(to));
        if let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes()) {
            self.transmits.push_back(Transmit { to, payload: bytes });
        }
        self.schedule(TimerOwner::Server(key));
    }

    /// An error response in its own transaction (so retransmissions get the same answer).
    pub(super) fn reply(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
        e: &EndpointError,
    ) {
        if req.method == Method::Invite {
            // A refused INVITE still needs the INVITE machine: Timer G/H and the ACK.
            let tag = self.random_token();
            let resp = self.error_response(from, req, e, Some(&tag));
            let cfg = self.cfg.tsx;
            let mut tsx = ServerInviteTsx::new(from);
            if let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes()) {
                self.transmits.push_back(Transmit {
                    to: from,
                    payload: bytes,
                });
            }
            self.server_invite.insert(key.clone(), (tsx, None));
            self.schedule(TimerOwner::Server(key));
        } else {
            let resp = self.error_response(from, req, e, None);
            self.respond_non_invite(now, from, key, resp);
        }
    }

    /// A 400 for a request we could not parse: no transaction (we may not even have a key).
    pub(super) fn reply_stateless(&mut self, from: SocketAddr, req: &Request, e: &EndpointError) {
        let resp = self.error_response(from, req, e, None);
        self.transmits.push_back(Transmit {
            to: from,
            payload: resp.to_bytes(),
        });
    }

    pub(super) fn error_response(
        &self,
        from: SocketAddr,
        req: &Request,
        e: &EndpointError,
        to_tag: Option<&str>,
    ) -> Response {
        let mut resp = self.build_response(from, req, e.status(), to_tag);
        resp.reason = e.reason();
        self.decorate_error(&mut resp, e);
        resp
    }

    pub(super) fn decorate_error(&self, resp: &mut Response, e: &EndpointError) {
        match e {
            EndpointError::Extension(ext) => resp.headers.push("Unsupported", ext.clone()),
            EndpointError::MethodNotAllowed => resp.headers.push("Allow", ALLOW),
            EndpointError::Info(info::InfoError::UnsupportedType(_)) => {
                resp.headers.push("Accept", info::CONTENT_TYPES.join(", "))
            }
            EndpointError::CSeqOrder | EndpointError::Pending => {
                resp.headers.push("Retry-After", "1")
            }
            _ => {}
        }
    }

    pub(super) fn send_bye(&mut self, now: Instant, call: CallHandle) {
        self.send_in_dialog(now, call, Method::Bye, vec![]);
    }

    /// Sends a request inside the call's dialog in its own client transaction; returns the
    /// transaction's key (`branch|METHOD`).
    pub(super) fn send_in_dialog(
        &mut self,
        now: Instant,
        call: CallHandle,
        method: Method,
        extra: Vec<(String, String)>,
    ) -> Option<String> {
        let branch = format!("z9hG4bK{}", self.random_token());
        let local = self.cfg.local_addr;
        let d = self.calls.get_mut(&call)?;
        d.local_cseq += 1;
        let mut req = dialog_request(d, local, &branch, method, d.local_cseq);
        for (n, v) in extra {
            req.headers.push(&n, v);
        }
        req.headers.push("User-Agent", self.cfg.user_agent.clone());
        // Next hop: the first route (loose routing) or the remote target; only IP literals can
        // be used without DNS, otherwise the address the INVITE came from.
        let hop = d
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r))
            .map(|n| n.uri)
            .unwrap_or_else(|| d.remote_target.clone());
        let to = Uri::parse(&hop)
            .and_then(|u| {
                let ip: IpAddr = u.host.trim_matches(['[', ']']).parse().ok()?;
                Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
            })
            .unwrap_or(d.peer);
        let key = format!("{branch}|{}", req.method);
        let bytes = req.to_bytes();
        let tsx = ClientNonInviteTsx::new(now, &self.cfg.tsx, to, bytes.clone());
        self.client.insert(key.clone(), tsx);
        self.transmits.push_back(Transmit { to, payload: bytes });
        self.schedule(TimerOwner::Client(key.clone()));
        Some(key)
    }

    /// Blind transfer (RFC 3515): asks the caller's side to call `refer_to`. The outcome
    /// arrives as [`SipEvent::ReferResult`]; the call stays up until the driver hangs up.
    pub fn refer(
        &mut self,
        now: Instant,
        call: CallHandle,
        refer_to: &str,
        extra: Vec<(String, String)>,
    ) {
        if self
            .calls
            .get(&call)
            .is_none_or(|d| d.state != DialogState::Confirmed)
        {
            self.events
                .push_back(SipEvent::ReferResult { call, code: 481 });
            return;
        }
        let mut headers = vec![
            ("Refer-To".to_string(), format!("<{refer_to}>")),
            (
                "Referred-By".to_string(),
                format!("<sip:ivr@{}>", self.cfg.local_addr),
            ),
        ];
        headers.extend(extra);
        if let Some(branch) = self.send_in_dialog(now, call, Method::Refer, headers) {
            self.refers.insert(branch, call);
        }
    }

    pub(super) fn remove_call(&mut self, call: CallHandle) {
        if let Some(d) = self.calls.remove(&call) {
            self.by_local_tag
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
            self.by_invite.remove(&(
                d.call_id,
                d.remote_tag,
                d.invite.cseq().map(|c| c.0).unwrap_or(0),
            ));
        }
    }
}

/// A request in a dialog (§12.2.1.1): our From and tag, their To, the dialog's route set,
/// sent to the remote target.
pub(super) fn dialog_request(
    d: &Dialog,
    local: SocketAddr,
    branch: &str,
    method: Method,
    cseq: u32,
) -> Request {
    let mut headers = Headers::new();
    headers.push("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"));
    headers.push("Max-Forwards", "70");
    headers.push("From", format!("{};tag={}", d.local_uri, d.local_tag));
    headers.push("To", d.remote_uri.clone());
    headers.push("Call-ID", d.call_id.clone());
    headers.push("CSeq", format!("{cseq} {method}"));
    for r in &d.route_set {
        headers.push("Route", r.clone());
    }
    Request {
        method,
        uri: d.remote_target.clone(),
        headers,
        body: Vec::new(),
    }
}
