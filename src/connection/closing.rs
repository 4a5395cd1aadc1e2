//! Closing: the closing handshake in both directions, failing the connection with the RFC's
//! code, reporting `on_close` exactly once, and draining until the TCP close.

use super::*;

impl<H: Handler> Connection<H> {
    /// Fail the connection (RFC 6455 §7.1.7): close frame with the error's code if still possible,
    /// `on_error`, `on_close`, then drain.
    pub fn fail(&mut self, ctx: &mut Ctx<'_>, e: Error) {
        match self.phase {
            Phase::Open | Phase::Closing => {
                let code = e.close_code();
                let code = if code.is_sendable() { code } else { CloseCode::INTERNAL_ERROR };
                let reason = match &e {
                    Error::Protocol(p) => p.to_string(),
                    _ => String::new(),
                };
                if !self.close_sent {
                    let mut payload = BytesMut::new();
                    CloseFrame::write_payload(code, &reason, &mut payload);
                    self.send_close_payload(ctx, payload.freeze());
                }
                self.call_error(e);
                self.acc.clear();
                self.report_close(ctx, code, truncate_reason(&reason));
                self.enter_draining(ctx, false);
            }
            Phase::Draining | Phase::Dead => {}
            _ => {
                self.call_error(e);
                self.phase = Phase::Dead;
            }
        }
    }

    pub(super) fn report_close(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        if self.opened && !self.close_reported {
            self.close_reported = true;
            ctx.shared.slots.set(self.id, SlotState::Closing);
            let _ = guard(ctx.settings.catch_panics, || {
                self.handler.on_close(code, reason);
                Ok(())
            });
        }
    }

    /// The closing handshake is over: flush, half-close (server), wait for the TCP close.
    ///
    /// After a clean closing handshake (both close frames exchanged) the peer sends nothing more,
    /// so a server closes its socket as soon as its close frame is written: FIN first, as RFC 6455
    /// §7.1.1 asks, with no half-close and no wait for the peer's FIN. After a failure or an HTTP
    /// rejection the peer may still be sending, and closing with unread data would make the kernel
    /// send a reset that can destroy our last frame: the server half-closes and reads until the
    /// peer's FIN (or the close timeout) instead.
    pub(super) fn enter_draining(&mut self, ctx: &mut Ctx<'_>, clean: bool) {
        if self.phase == Phase::Dead {
            return;
        }
        self.phase = Phase::Draining;
        ctx.shared.slots.set(self.id, SlotState::Closing);
        if self.role == Role::Server {
            if clean {
                self.close_after_flush = true;
            } else {
                self.shutdown_after_flush = true;
            }
        }
        self.schedule_flush();
        self.arm_close_timer(ctx);
    }

    pub(super) fn arm_close_timer(&mut self, ctx: &mut Ctx<'_>) {
        if self.close_timer.is_none() {
            let at = ctx.now + ctx.settings.close_timeout;
            self.close_timer = Some(ctx.timers.schedule(at, self.id, TimerKind::CloseHandshake));
        }
    }

    pub(super) fn send_close_payload(&mut self, ctx: &mut Ctx<'_>, payload: Bytes) {
        self.finish_streamed_frame(ctx);
        self.queue_control(ctx, OpCode::Close, &payload);
        self.close_sent = true;
        self.arm_close_timer(ctx);
    }

    /// Start the closing handshake.
    pub(super) fn close(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        match self.phase {
            Phase::Open => {
                let mut payload = BytesMut::new();
                CloseFrame::write_payload(code, reason, &mut payload);
                self.send_close_payload(ctx, payload.freeze());
                ctx.shared.slots.set(self.id, SlotState::Closing);
                if self.phase != Phase::Dead {
                    self.phase = Phase::Closing;
                }
            }
            Phase::Closing | Phase::Draining | Phase::Dead => {}
            _ => self.phase = Phase::Dead,
        }
    }

    /// Shut down gracefully: close with 1001 if open, drop if not yet open.
    pub fn going_away(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        match self.phase {
            Phase::Open => {
                self.close(ctx, CloseCode::GOING_AWAY, "server shutting down");
                Drive::Idle
            }
            Phase::Closing | Phase::Draining => Drive::Idle,
            _ => {
                self.phase = Phase::Dead;
                Drive::Dead
            }
        }
    }
}
