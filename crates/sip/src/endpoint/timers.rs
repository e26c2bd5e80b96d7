//! Timers: which deadline is next, and what each one firing does.

use super::*;

impl Endpoint {
    pub(super) fn deadline_of(&self, owner: &TimerOwner) -> Option<Instant> {
        match owner {
            TimerOwner::Server(k) => match self.server_invite.get(k) {
                Some((t, _)) => t.poll_timeout(),
                None => self.server_other.get(k).and_then(|t| t.poll_timeout()),
            },
            TimerOwner::Client(b) => self.client.get(b).and_then(|t| t.poll_timeout()),
            TimerOwner::ClientInvite(b) => {
                self.client_invite.get(b).and_then(|t| t.0.poll_timeout())
            }
            TimerOwner::Dialog(c) => self
                .calls
                .get(c)
                .and_then(|d| d.ok_retransmit.as_ref())
                .map(|r| r.next.min(r.give_up)),
        }
    }

    pub(super) fn schedule(&mut self, owner: TimerOwner) {
        if let Some(at) = self.deadline_of(&owner) {
            self.timers.push(Reverse((at, owner)));
        }
    }

    pub(super) fn on_server_timeout(&mut self, now: Instant, key: TsxKey) {
        let cfg = self.cfg.tsx;
        if let Some((tsx, call)) = self.server_invite.get_mut(&key) {
            let out = tsx.handle_timeout(now, &cfg);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                let call = *call;
                self.server_invite.remove(&key);
                if out.timed_out {
                    tracing::debug!(?call, "no ACK for a final response (Timer H)");
                }
            }
        } else if let Some(tsx) = self.server_other.get_mut(&key)
            && tsx.handle_timeout(now).terminated
        {
            self.server_other.remove(&key);
        }
        self.schedule(TimerOwner::Server(key));
    }

    pub(super) fn on_client_timeout(&mut self, now: Instant, branch: String) {
        let cfg = self.cfg.tsx;
        if let Some(tsx) = self.client.get_mut(&branch) {
            let out = tsx.handle_timeout(now, &cfg);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                if out.timed_out {
                    tracing::debug!("in-dialog request not answered (Timer F)");
                    if let Some(call) = self.refers.remove(&branch) {
                        self.events
                            .push_back(SipEvent::ReferResult { call, code: 408 });
                    }
                }
                self.client.remove(&branch);
            }
        }
        self.schedule(TimerOwner::Client(branch));
    }

    pub(super) fn on_client_invite_timeout(&mut self, now: Instant, branch: String) {
        if let Some((tsx, call)) = self.client_invite.get_mut(&branch) {
            let (call, peer) = (*call, tsx.peer);
            let out = tsx.handle_timeout(now);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                self.client_invite.remove(&branch);
                if out.timed_out {
                    // Timer B: nobody answered the INVITE at all.
                    self.remove_call(call);
                    self.events.push_back(SipEvent::Outbound {
                        call,
                        code: 408,
                        sdp: None,
                    });
                }
            }
        }
        self.schedule(TimerOwner::ClientInvite(branch));
    }

    pub(super) fn on_dialog_timeout(&mut self, now: Instant, call: CallHandle) {
        let cfg = self.cfg.tsx;
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(r) = d.ok_retransmit.as_mut() else {
            return;
        };
        if now >= r.give_up {
            // §13.3.1.4: no ACK within 64·T1 — confirm and end the dialog with a BYE.
            d.ok_retransmit = None;
            let initial = d.state == DialogState::WaitAck;
            d.state = DialogState::Confirmed;
            self.send_bye(now, call);
            self.remove_call(call);
            if initial {
                self.events.push_back(SipEvent::Ended {
                    call,
                    reason: EndReason::AckTimeout,
                });
            }
            return;
        }
        if now >= r.next {
            r.interval = (r.interval * 2).min(cfg.t2);
            r.next = now + r.interval;
            self.transmits.push_back(Transmit {
                to: d.peer,
                payload: r.bytes.clone(),
            });
        }
        self.schedule(TimerOwner::Dialog(call));
    }
}
