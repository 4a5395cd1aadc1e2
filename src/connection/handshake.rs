//! Opening a connection: name resolution and TCP connect (clients), the opening handshake in
//! both roles, and the switch to the open state.

use super::*;

impl<H: Handler> Connection<H> {
    /// Name resolution finished: connect to the first address that works.
    pub fn resolved(&mut self, addrs: io::Result<Vec<SocketAddr>>, ctx: &mut Ctx<'_>) -> Drive {
        if self.phase != Phase::Resolving {
            return Drive::Idle;
        }
        match addrs {
            Ok(a) if !a.is_empty() => {
                if let Some(hs) = self.client_hs.as_mut() {
                    hs.addrs = a;
                    hs.addrs.reverse(); // pop() takes them in the resolver's order
                }
                self.connect_next(ctx, None)
            }
            Ok(_) => self.fail_handshake(Error::Io(io::Error::new(io::ErrorKind::NotFound, "no address for host"))),
            Err(e) => self.fail_handshake(Error::Io(e)),
        }
    }

    pub(super) fn connect_next(&mut self, ctx: &mut Ctx<'_>, last_err: Option<io::Error>) -> Drive {
        if let Some(mut old) = self.socket.take() {
            let _ = ctx.registry.deregister(&mut old);
        }
        let Some(addr) = self.client_hs.as_mut().and_then(|h| h.addrs.pop()) else {
            let e = last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
            return self.fail_handshake(Error::Io(e));
        };
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = ctx.registry.register(&mut s, self.token(), Interest::READABLE | Interest::WRITABLE) {
                    return self.fail_handshake(Error::Io(e));
                }
                self.write_interest = true;
                self.socket = Some(s);
                self.peer = Some(addr);
                self.phase = Phase::Connecting;
                Drive::Idle
            }
            Err(e) => self.connect_next(ctx, Some(e)),
        }
    }

    pub(super) fn connect_done(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let sock = self.socket.as_mut().expect("connecting socket");
        let err = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Drive::Idle, // spurious
                Err(e) => Some(e),
            },
        };
        if let Some(e) = err {
            return self.connect_next(ctx, Some(e));
        }
        if ctx.settings.tcp_nodelay {
            let _ = sock.set_nodelay(true);
        }
        let hs = self.client_hs.as_ref().expect("client handshake");
        let mut req = Vec::with_capacity(256);
        hs.request.write(&hs.url, &hs.key, &mut req);
        self.wq.push_slice(&req);
        ctx.shared.slots.add(self.id.slot as usize, req.len());
        self.phase = Phase::ClientHandshake;
        self.want_read = true;
        self.budget = ctx.settings.read_budget;
        if let Err(e) = self.flush(ctx) {
            return self.io_error(e);
        }
        self.drive(ctx)
    }

    pub(super) fn fail_handshake(&mut self, e: Error) -> Drive {
        log::debug!("{} {:?}: handshake failed: {e}", self.id, self.peer);
        self.call_error(e);
        self.phase = Phase::Dead;
        Drive::Dead
    }

    pub(super) fn server_handshake(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let parser = self.server_hs.as_mut().expect("server handshake state");
        let parsed = parser.parse(self.rbuf.data());
        let (request, head_len) = match parsed {
            Ok(None) => return Step::Continue,
            Ok(Some(r)) => r,
            Err(e) => {
                log::debug!("{} {:?}: rejected handshake: {e}", self.id, self.peer);
                let rejection = Rejection::from_error(&e);
                self.call_error(Error::Handshake(e));
                return self.reject(ctx, &rejection);
            }
        };
        self.rbuf.consume(head_len);
        self.server_hs = None;
        let catch = ctx.settings.catch_panics;
        let decision = match catch_unwind(AssertUnwindSafe(|| self.handler.on_request(&request))) {
            Ok(d) => d,
            Err(_) if catch => Err(Rejection::new(500)),
            Err(p) => std::panic::resume_unwind(p),
        };
        match decision {
            Ok(response) => {
                let mut head = Vec::with_capacity(160);
                response.write(request.key(), &mut head);
                self.wq.push_slice(&head);
                ctx.shared.slots.add(self.id.slot as usize, head.len());
                self.schedule_flush();
                self.open(ctx)
            }
            Err(rejection) => {
                self.call_error(Error::Handshake(HandshakeError::RejectedByHandler(rejection.status())));
                self.reject(ctx, &rejection)
            }
        }
    }

    pub(super) fn reject(&mut self, ctx: &mut Ctx<'_>, rejection: &Rejection) -> Step {
        let mut out = Vec::with_capacity(256);
        rejection.write(&mut out);
        self.wq.push_slice(&out);
        ctx.shared.slots.add(self.id.slot as usize, out.len());
        self.server_hs = None;
        self.enter_draining(ctx, false);
        Step::Continue
    }

    pub(super) fn client_handshake(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let hs = self.client_hs.as_mut().expect("client handshake state");
        let (response, head_len) = match hs.parser.parse(self.rbuf.data()) {
            Ok(None) => return Step::Continue,
            Ok(Some(r)) => r,
            Err(e) => {
                self.fail_handshake(Error::Handshake(e));
                return Step::Dead;
            }
        };
        if response.status() != 101 {
            hs.rejected = Some((response, head_len));
            self.phase = Phase::ClientRejected;
            if self.rejected_body_complete() {
                self.finish_rejected();
                return Step::Dead;
            }
            return Step::Continue;
        }
        if let Err(e) = response.validate(&hs.key, &hs.request) {
            self.fail_handshake(Error::Handshake(e));
            return Step::Dead;
        }
        self.rbuf.consume(head_len);
        let catch = ctx.settings.catch_panics;
        if let Err(e) = guard(catch, || self.handler.on_response(&response)) {
            self.fail_handshake(e);
            return Step::Dead;
        }
        self.client_hs = None;
        self.open(ctx)
    }

    pub(super) fn rejected_body_complete(&self) -> bool {
        let Some((resp, head)) = self.client_hs.as_ref().and_then(|h| h.rejected.as_ref()) else { return true };
        match resp.content_length() {
            Some(n) => self.rbuf.filled() >= head + n.min(64 * 1024),
            None => self.rbuf.filled() >= head + 64 * 1024,
        }
    }

    pub(super) fn finish_rejected(&mut self) -> Drive {
        let Some((resp, head)) = self.client_hs.as_mut().and_then(|h| h.rejected.take()) else {
            self.phase = Phase::Dead;
            return Drive::Dead;
        };
        let data = self.rbuf.data();
        let end = match resp.content_length() {
            Some(n) => (head + n).min(data.len()),
            None => data.len().min(head + 64 * 1024),
        };
        let body = data[head.min(end)..end].to_vec();
        let headers =
            resp.headers().iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned())).collect();
        self.fail_handshake(Error::Handshake(HandshakeError::Rejected { status: resp.status(), headers, body }))
    }

    pub(super) fn open(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.cancel_open_timer(ctx);
        self.phase = Phase::Open;
        self.opened = true;
        self.last_rx = ctx.now;
        ctx.shared.slots.set(self.id, SlotState::Open);
        self.level = self.handler.level();
        if self.level == Level::Stream {
            self.decoder.config_mut().max_message_size = None;
        }
        if ctx.settings.keepalive_interval.is_some() || ctx.settings.idle_timeout.is_some() {
            let first = [ctx.settings.keepalive_interval, ctx.settings.idle_timeout].into_iter().flatten().min();
            if let Some(d) = first {
                self.keepalive_timer = Some(ctx.timers.schedule(ctx.now + d, self.id, TimerKind::KeepAlive));
            }
        }
        let catch = ctx.settings.catch_panics;
        let r = guard(catch, || self.handler.on_open());
        self.after_callback(ctx, r)
    }
}
