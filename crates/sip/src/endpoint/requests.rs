//! Requests from the network: new calls, re-INVITEs, CANCEL, BYE, INFO, ACK.

use super::*;

impl Endpoint {
    pub(super) fn on_request(&mut self, now: Instant, from: SocketAddr, req: Request) {
        let Some(via) = req.top_via() else { return };
        let key = TsxKey::for_request(&req, &via);

        if req.method == Method::Ack {
            if let Some((tsx, _)) = self.server_invite.get_mut(&key)
                && tsx.handle_ack(now, &self.cfg.tsx)
            {
                self.schedule(TimerOwner::Server(key));
                return;
            }
            self.on_ack_2xx(now, &req);
            return;
        }
        // Retransmissions are answered by their transaction.
        if let Some((tsx, _)) = self.server_invite.get_mut(&key) {
            if let Some(bytes) = tsx.handle_retransmission() {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            return;
        }
        if let Some(tsx) = self.server_other.get_mut(&key) {
            if let Some(bytes) = tsx.handle_retransmission() {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            return;
        }

        if let Err(e) = self.check_request(&req) {
            self.reply(now, from, key, &req, &e);
            return;
        }
        let result = match req.method {
            Method::Invite if req.to().and_then(|t| t.tag().map(String::from)).is_none() => {
                self.on_new_invite(now, from, key.clone(), req.clone())
            }
            Method::Invite => self.on_reinvite(now, from, key.clone(), req.clone()),
            Method::Cancel => self.on_cancel(now, from, key.clone(), &req),
            Method::Bye => self.on_bye(now, from, key.clone(), &req),
            Method::Info => self.on_info(now, from, key.clone(), &req),
            // Progress of a transfer we asked for (RFC 3515 §2.4.4): acknowledged, not needed.
            Method::Notify => self.dialog_for(&req).map(|_| {
                let ok = self.build_response(from, &req, 200, None);
                self.respond_non_invite(now, from, key.clone(), ok);
            }),
            Method::Options if self.draining => {
                let mut resp = self.build_response(from, &req, 503, None);
                resp.headers.push("Retry-After", "30");
                self.respond_non_invite(now, from, key.clone(), resp);
                Ok(())
            }
            Method::Options => {
                let mut resp = self.build_response(from, &req, 200, None);
                resp.headers.push("Allow", ALLOW);
                resp.headers.push(
                    "Accept",
                    "application/sdp, application/dtmf-relay, application/dtmf",
                );
                self.respond_non_invite(now, from, key.clone(), resp);
                Ok(())
            }
            _ => Err(EndpointError::MethodNotAllowed),
        };
        if let Err(e) = result {
            self.reply(now, from, key, &req, &e);
        }
    }

    /// Checks every request must pass before its method is looked at.
    pub(super) fn check_request(&self, req: &Request) -> Result<(), EndpointError> {
        match Uri::parse(&req.uri) {
            Some(u) if u.scheme == "sip" || u.scheme == "sips" => {}
            Some(_) => return Err(EndpointError::UriScheme),
            None => return Err(EndpointError::Malformed(ParseError::BadStartLine)),
        }
        if req.headers.get("Max-Forwards").map(str::trim) == Some("0") {
            return Err(EndpointError::TooManyHops);
        }
        if req.method != Method::Cancel {
            let required = req.headers.list("Require");
            if !required.is_empty() {
                return Err(EndpointError::Extension(required.join(", ")));
            }
        }
        Ok(())
    }

    pub(super) fn on_new_invite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: Request,
    ) -> Result<(), EndpointError> {
        let from_addr = req
            .from()
            .ok_or(EndpointError::Malformed(ParseError::BadHeaderValue("From")))?;
        let remote_tag = from_addr.tag().unwrap_or("").to_string();
        let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
        let merged_key = (req.call_id().to_string(), remote_tag.clone(), cseq);
        if self.by_invite.contains_key(&merged_key) {
            return Err(EndpointError::Merged);
        }
        let contact = req
            .contact()
            .ok_or(EndpointError::Malformed(ParseError::MissingHeader(
                "Contact",
            )))?;

        let call = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local_tag = self.random_token();
        let to_value = req.headers.get("To").unwrap_or("").to_string();
        let dialled = Uri::parse(&req.uri)
            .and_then(|u| u.user)
            .or_else(|| req.to().and_then(|t| t.user()))
            .unwrap_or_default();
        let mut route_set: Vec<String> = req
            .headers
            .list("Record-Route")
            .into_iter()
            .map(String::from)
            .collect();
        route_set.retain(|r| !r.is_empty());
        let dialog = Dialog {
            call_id: req.call_id().to_string(),
            local_tag: local_tag.clone(),
            remote_tag,
            local_uri: to_value,
            remote_uri: req.headers.get("From").unwrap_or("").to_string(),
            remote_target: contact.uri.clone(),
            route_set,
            local_cseq: self.rng.random_range(1..10_000),
            remote_cseq: cseq,
            peer: from,
            state: DialogState::Early,
            invite: req.clone(),
            invite_key: key.clone(),
            reinvite_pending: false,
            ok_retransmit: None,
            bye_after_ack: false,
            outbound: None,
        };
        self.by_local_tag
            .insert((dialog.call_id.clone(), local_tag), call);
        self.by_invite.insert(merged_key, call);
        self.calls.insert(call, dialog);
        self.server_invite
            .insert(key.clone(), (ServerInviteTsx::new(from), Some(call)));
        // 100 Trying at once, so the caller stops retransmitting the INVITE.
        let trying = self.build_response(from, &req, 100, None);
        self.send_invite_response(now, call, trying);

        let body_is_sdp = req
            .headers
            .get("Content-Type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"));
        self.events.push_back(SipEvent::Incoming(IncomingCall {
            call,
            call_id: req.call_id().to_string(),
            caller: from_addr
                .user()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "anonymous".into()),
            caller_display: from_addr.display.clone(),
            dialled,
            offer: if body_is_sdp {
                req.body.clone()
            } else {
                Vec::new()
            },
            source: from,
        }));
        Ok(())
    }

    pub(super) fn on_reinvite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(&req)?;
        let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
        let d = self.calls.get_mut(&call).ok_or(EndpointError::NoDialog)?;
        if d.state != DialogState::Confirmed || d.reinvite_pending {
            return Err(EndpointError::Pending);
        }
        if cseq <= d.remote_cseq {
            return Err(EndpointError::CSeqOrder);
        }
        d.remote_cseq = cseq;
        if let Some(c) = req.contact() {
            d.remote_target = c.uri;
        }
        d.invite = req.clone();
        d.invite_key = key.clone();
        d.reinvite_pending = true;
        self.server_invite
            .insert(key, (ServerInviteTsx::new(from), Some(call)));
        let trying = self.build_response(from, &req, 100, None);
        self.send_invite_response(now, call, trying);
        self.events.push_back(SipEvent::Reoffer {
            call,
            offer: req.body.clone(),
        });
        Ok(())
    }

    pub(super) fn on_cancel(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let invite_key = TsxKey {
            invite: true,
            cancel: false,
            ..key.clone()
        };
        let (state, call) = match self.server_invite.get(&invite_key) {
            Some((tsx, call)) => (tsx.state, *call),
            None => return Err(EndpointError::NoDialog),
        };
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        if state == InviteState::Proceeding
            && let Some(call) = call
            && self
                .calls
                .get(&call)
                .is_some_and(|d| d.state == DialogState::Early)
        {
            self.end_by_caller(now, call, EndReason::Cancelled);
        }
        Ok(())
    }

    /// The caller ended the call (BYE or CANCEL): a pending INVITE gets its 487 (§9.2,
    /// §15.1.2), the dialog goes, and the driver is told.
    pub(super) fn end_by_caller(&mut self, now: Instant, call: CallHandle, reason: EndReason) {
        if self
            .calls
            .get(&call)
            .is_some_and(|d| d.state == DialogState::Early && d.outbound.is_none())
        {
            let resp = self.response_for(call, 487);
            self.send_invite_response(now, call, resp);
        }
        self.remove_call(call);
        self.events.push_back(SipEvent::Ended { call, reason });
    }

    pub(super) fn on_bye(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(req)?;
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        self.end_by_caller(now, call, EndReason::RemoteBye);
        Ok(())
    }

    pub(super) fn on_info(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(req)?;
        let digit = if req.body.is_empty() {
            None // An empty INFO is a keep-alive probe.
        } else {
            let ctype = req.headers.get("Content-Type").unwrap_or("");
            Some(info::parse(ctype, &req.body).map_err(EndpointError::Info)?)
        };
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        if let Some(digit) = digit {
            self.events.push_back(SipEvent::Dtmf { call, digit });
        }
        Ok(())
    }

    pub(super) fn on_ack_2xx(&mut self, now: Instant, req: &Request) {
        let Ok(call) = self.dialog_for(req) else {
            return;
        };
        let cseq = req.cseq().map(|c| c.0);
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        if d.ok_retransmit.as_ref().map(|r| r.cseq) != cseq {
            return;
        }
        d.ok_retransmit = None;
        let first = d.state == DialogState::WaitAck;
        d.state = DialogState::Confirmed;
        let bye = d.bye_after_ack;
        self.schedule(TimerOwner::Dialog(call));
        if bye {
            self.send_bye(now, call);
            self.remove_call(call);
        } else if first {
            let answer = Some(req.body.clone()).filter(|b| !b.trim_ascii().is_empty());
            self.events.push_back(SipEvent::Confirmed { call, answer });
        }
    }

    pub(super) fn dialog_for(&self, req: &Request) -> Result<CallHandle, EndpointError> {
        let tag = req
            .to()
            .and_then(|t| t.tag().map(String::from))
            .ok_or(EndpointError::NoDialog)?;
        self.by_local_tag
            .get(&(req.call_id().to_string(), tag))
            .copied()
            .ok_or(EndpointError::NoDialog)
    }
}
