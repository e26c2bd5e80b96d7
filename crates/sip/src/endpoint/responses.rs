//! Responses to our requests, and the calls we place (the calling service's outbound leg).

use super::*;

impl Endpoint {
    pub(super) fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(String::from)) else {
            return;
        };
        let Some((_, method)) = resp.cseq() else {
            return;
        };
        if method == Method::Invite {
            self.on_invite_response(now, &branch, resp);
            return;
        }
        let key = format!("{branch}|{method}");
        if let Some(tsx) = self.client.get_mut(&key) {
            tsx.handle_response(now, &self.cfg.tsx, resp.code);
            if resp.code >= 200
                && let Some(call) = self.refers.remove(&key)
            {
                self.events.push_back(SipEvent::ReferResult {
                    call,
                    code: resp.code,
                });
            }
            self.schedule(TimerOwner::Client(key));
        }
    }

    /// A response to an INVITE we sent (the calling service).
    pub(super) fn on_invite_response(&mut self, now: Instant, branch: &str, resp: Response) {
        let Some((tsx, call)) = self.client_invite.get_mut(branch) else {
            // A retransmitted 2xx after the transaction ended: acknowledge it again.
            if (200..300).contains(&resp.code)
                && let Some(call) = self.outbound_for(&resp)
                && let Some(ack) = self
                    .calls
                    .get(&call)
                    .and_then(|d| d.outbound.as_ref())
                    .and_then(|o| o.ack.clone())
            {
                let to = self.calls[&call].peer;
                self.transmits.push_back(Transmit { to, payload: ack });
            }
            return;
        };
        let call = *call;
        let peer = tsx.peer;
        let invite = match self.calls.get(&call) {
            Some(d) => d.invite.clone(),
            None => return,
        };
        let code = resp.code;
        let ack_for_failure = || {
            // §17.1.1.3: same branch, the response's To (with its tag).
            let mut headers = Headers::new();
            for (n, v) in invite.headers.iter() {
                if matches!(n, "Via" | "From" | "Call-ID" | "Route" | "Max-Forwards") {
                    headers.push(n, v);
                }
            }
            headers.push("To", resp.headers.get("To").unwrap_or(""));
            headers.push(
                "CSeq",
                format!("{} ACK", invite.cseq().map(|c| c.0).unwrap_or(1)),
            );
            Request {
                method: Method::Ack,
                uri: invite.uri.clone(),
                headers,
                body: vec![],
            }
            .to_bytes()
        };
        if let Some(bytes) = tsx.handle_response(now, code, ack_for_failure) {
            self.transmits.push_back(Transmit {
                to: peer,
                payload: bytes,
            });
        }
        if tsx.state == InviteState::Terminated {
            self.client_invite.remove(branch);
        }
        self.schedule(TimerOwner::ClientInvite(branch.to_string()));
        match code {
            100 => {}
            101..=199 => self.events.push_back(SipEvent::Outbound {
                call,
                code,
                sdp: None,
            }),
            200..=299 => {
                let Some(d) = self.calls.get_mut(&call) else {
                    return;
                };
                if d.state == DialogState::Confirmed {
                    return;
                }
                // The dialog is established: the callee's tag, target and route set (§12.1.2).
                let to = resp.headers.get("To").unwrap_or("").to_string();
                d.remote_tag = NameAddr::parse(&to)
                    .and_then(|n| n.tag().map(String::from))
                    .unwrap_or_default();
                d.remote_uri = to;
                if let Some(c) = resp
                    .headers
                    .list("Contact")
                    .first()
                    .and_then(|c| NameAddr::parse(c))
                {
                    d.remote_target = c.uri;
                }
                d.route_set = resp
                    .headers
                    .list("Record-Route")
                    .into_iter()
                    .rev()
                    .map(String::from)
                    .collect();
                d.state = DialogState::Confirmed;
                let ack = self.build_ack_for_2xx(call);
                if let Some(d) = self.calls.get_mut(&call)
                    && let Some(o) = d.outbound.as_mut()
                {
                    o.ack = ack.clone();
                }
                if let Some(ack) = ack {
                    self.transmits.push_back(Transmit {
                        to: peer,
                        payload: ack,
                    });
                }
                self.events.push_back(SipEvent::Outbound {
                    call,
                    code,
                    sdp: Some(resp.body.clone()),
                });
            }
            _ => {
                self.remove_call(call);
                self.events.push_back(SipEvent::Outbound {
                    call,
                    code,
                    sdp: None,
                });
            }
        }
    }

    /// The ACK for a 2xx: a new transaction-less request in the dialog (§13.2.2.4).
    pub(super) fn build_ack_for_2xx(&mut self, call: CallHandle) -> Option<Vec<u8>> {
        let branch = format!("z9hG4bK{}", self.random_token());
        let d = self.calls.get(&call)?;
        let cseq = d.invite.cseq().map(|c| c.0).unwrap_or(1);
        Some(dialog_request(d, self.cfg.local_addr, &branch, Method::Ack, cseq).to_bytes())
    }

    /// Our outbound call a response belongs to (by Call-ID and our From tag).
    pub(super) fn outbound_for(&self, resp: &Response) -> Option<CallHandle> {
        let call_id = resp.headers.get("Call-ID")?;
        let tag = NameAddr::parse(resp.headers.get("From")?)?
            .tag()?
            .to_string();
        self.by_local_tag.get(&(call_id.to_string(), tag)).copied()
    }

    /// Places a call: INVITE `uri` (sent to `peer`) with our SDP offer, from `from_user`.
    /// Progress and the answer arrive as [`SipEvent::Outbound`].
    pub fn invite(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        uri: &str,
        from_user: &str,
        sdp: Vec<u8>,
    ) -> CallHandle {
        let call = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local = self.cfg.local_addr;
        let call_id = format!("{}@{}", self.random_token(), local.ip());
        let local_tag = self.random_token();
        let branch = format!("z9hG4bK{}", self.random_token());
        let local_uri = format!("<sip:{from_user}@{}>", local.ip());
        let mut headers = Headers::new();
        headers.push("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"));
        headers.push("Max-Forwards", "70");
        headers.push("From", format!("{local_uri};tag={local_tag}"));
        headers.push("To", format!("<{uri}>"));
        headers.push("Call-ID", call_id.clone());
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", format!("<sip:ivr@{local}>"));
        headers.push("Allow", ALLOW);
        headers.push("User-Agent", self.cfg.user_agent.clone());
        headers.push("Content-Type", "application/sdp");
        let req = Request {
            method: Method::Invite,
            uri: uri.to_string(),
            headers,
            body: sdp,
        };
        let bytes = req.to_bytes();
        let dialog = Dialog {
            call_id: call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: String::new(),
            local_uri,
            remote_uri: format!("<{uri}>"),
            remote_target: uri.to_string(),
            route_set: vec![],
            local_cseq: 1,
            remote_cseq: 0,
            peer,
            state: DialogState::Early,
            invite: req,
            invite_key: TsxKey {
                branch: branch.clone(),
                sent_by: String::new(),
                invite: true,
                cancel: false,
            },
            reinvite_pending: false,
            ok_retransmit: None,
            bye_after_ack: false,
            outbound: Some(Outbound {
                branch: branch.clone(),
                ack: None,
            }),
        };
        self.by_local_tag.insert((call_id, local_tag), call);
        self.calls.insert(call, dialog);
        let tsx = ClientInviteTsx::new(now, &self.cfg.tsx, peer, bytes.clone());
        self.client_invite.insert(branch.clone(), (tsx, call));
        self.transmits.push_back(Transmit {
            to: peer,
            payload: bytes,
        });
        self.schedule(TimerOwner::ClientInvite(branch));
        call
    }

    /// Gives up on a call we placed that is not answered yet (§9.1).
    pub(super) fn cancel_outbound(&mut self, now: Instant, call: CallHandle) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        let Some(o) = &d.outbound else { return };
        let mut headers = Headers::new();
        for (n, v) in d.invite.headers.iter() {
            if matches!(
                n,
                "Via" | "From" | "To" | "Call-ID" | "Route" | "Max-Forwards"
            ) {
                headers.push(n, v);
            }
        }
        headers.push(
            "CSeq",
            format!("{} CANCEL", d.invite.cseq().map(|c| c.0).unwrap_or(1)),
        );
        let req = Request {
            method: Method::Cancel,
            uri: d.invite.uri.clone(),
            headers,
            body: vec![],
        };
        let key = format!("{}|CANCEL", o.branch);
        let bytes = req.to_bytes();
        let tsx = ClientNonInviteTsx::new(now, &self.cfg.tsx, d.peer, bytes.clone());
        self.transmits.push_back(Transmit {
            to: d.peer,
            payload: bytes,
        });
        self.client.insert(key.clone(), tsx);
        self.schedule(TimerOwner::Client(key));
    }
}
