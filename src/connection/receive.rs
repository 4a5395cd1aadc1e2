//! The receive side of an open connection: decoding frames and dispatching them to the handler
//! at its level (message, frame or stream), one callback at a time.

use super::*;
use crate::protocol::decoder::WholeMessage;
use crate::sender::LocalFront;

impl<H: Handler> Connection<H> {
    /// Decode frames and dispatch their events.
    pub(super) fn frames(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.awaiting = 0;
        let mut data = self.rbuf.take_data();
        let step = self.frames_from(ctx, &mut data);
        self.rbuf.restore(data);
        step
    }

    pub(super) fn frames_from(&mut self, ctx: &mut Ctx<'_>, data: &mut BytesMut) -> Step {
        let catch = ctx.settings.catch_panics;
        loop {
            if data.is_empty() && self.decoder.needs_input() {
                return Step::Continue;
            }
            if self.level == Level::Message {
                // A binary frame that fits the read buffer is awaited whole, so it becomes a
                // message without joining pieces (a copy); larger ones, text and fragments are
                // decoded as they arrive.
                match self.decoder.whole_message(data, ctx.settings.read_buffer_size / 2) {
                    Ok(WholeMessage::Message(kind, payload)) => {
                        let msg = match kind {
                            MessageKind::Text => Message::Text(crate::Utf8Bytes::from_validated(payload)),
                            MessageKind::Binary => Message::Binary(payload),
                        };
                        let r = guard(catch, || self.handler.on_message(msg));
                        match self.after_callback(ctx, r) {
                            Step::Continue => continue,
                            other => return other,
                        }
                    }
                    Ok(WholeMessage::Incomplete { missing }) => {
                        self.awaiting = missing;
                        return Step::Continue;
                    }
                    Ok(WholeMessage::Decode) => {}
                    Err(e) => {
                        log::debug!("{} {:?}: protocol error: {e}", self.id, self.peer);
                        self.fail(ctx, Error::Protocol(e));
                        return Step::Continue;
                    }
                }
            }
            let ev = self.decoder.next_event(data);
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => return Step::Continue,
                Err(e) => {
                    log::debug!("{} {:?}: protocol error: {e}", self.id, self.peer);
                    self.fail(ctx, Error::Protocol(e));
                    return Step::Continue;
                }
            };
            let r = match (ev, self.level) {
                (Event::MessageBegin { kind, .. }, level) => {
                    self.msg_kind = Some(kind);
                    if level == Level::Message {
                        continue;
                    }
                    guard(catch, || self.handler.on_message_begin(kind))
                }
                (Event::FrameBegin { len, .. }, Level::Stream) => guard(catch, || self.handler.on_frame_begin(len)),
                (Event::FrameBegin { .. }, _) => continue,
                (Event::FrameData(chunk), Level::Stream) => guard(catch, || self.handler.on_frame_data(chunk)),
                (Event::FrameData(chunk), _) => {
                    self.acc.push(chunk);
                    continue;
                }
                (Event::FrameEnd { .. }, Level::Stream) => guard(catch, || self.handler.on_frame_end()),
                (Event::FrameEnd { .. }, Level::Frame) => {
                    let payload = self.acc.take();
                    guard(catch, || self.handler.on_message_frame(payload))
                }
                (Event::FrameEnd { .. }, Level::Message) => continue,
                (Event::MessageEnd, Level::Message) => {
                    let kind = self.msg_kind.take().unwrap_or(MessageKind::Binary);
                    let msg = self.acc.take_message(kind);
                    guard(catch, || self.handler.on_message(msg))
                }
                (Event::MessageEnd, _) => {
                    self.msg_kind = None;
                    guard(catch, || self.handler.on_message_end())
                }
                (Event::Ping(payload), _) => {
                    // A peer that pings without reading must not grow our queue: past the send
                    // queue limit, pings go unanswered (RFC 6455 §5.5.3 lets an endpoint answer
                    // only the most recent of several pings).
                    let room = ctx.shared.slots.buffered(self.id) + payload.len() + 6 <= ctx.settings.max_send_queue;
                    if ctx.settings.auto_pong && !self.close_sent && room {
                        self.queue_control(ctx, OpCode::Pong, &payload);
                    }
                    guard(catch, || self.handler.on_ping(payload))
                }
                (Event::Pong(payload), _) => guard(catch, || self.handler.on_pong(payload)),
                (Event::Close(frame), _) => {
                    self.peer_closed(ctx, frame);
                    return Step::Continue;
                }
            };
            match self.after_callback(ctx, r) {
                Step::Continue => {}
                other => return other,
            }
        }
    }

    /// After a handler callback: fail on error, yield if it queued commands.
    pub(super) fn after_callback(&mut self, ctx: &mut Ctx<'_>, r: Result<()>) -> Step {
        if let Err(e) = r {
            if let Error::HandlerPanic(msg) = &e {
                log::error!("{} {:?}: handler panicked: {msg}", self.id, self.peer);
            }
            self.fail(ctx, e);
        }
        // Commands for this connection (an echo, a close) are applied here, in order; the loop
        // is asked to step in only for commands addressed elsewhere.
        loop {
            match crate::sender::pop_local_for(self.id) {
                LocalFront::Mine(cmd) => {
                    if self.apply(cmd.op, cmd.accounted, ctx) == Drive::Dead {
                        self.phase = Phase::Dead;
                        return Step::Dead;
                    }
                }
                LocalFront::Other => return Step::Yield,
                LocalFront::Empty => return Step::Continue,
            }
        }
    }

    /// The peer's close frame arrived.
    pub(super) fn peer_closed(&mut self, ctx: &mut Ctx<'_>, frame: Option<CloseFrame>) {
        let (code, reason) = match &frame {
            Some(f) => (f.code, f.reason.to_string()),
            None => (CloseCode::NO_STATUS, String::new()),
        };
        log::debug!("{} {:?}: peer closed with {code} {reason:?}", self.id, self.peer);
        if !self.close_sent {
            // Echo the peer's code (RFC 6455 §5.5.1); an empty close is answered with an empty one.
            let mut payload = BytesMut::new();
            if frame.is_some() {
                CloseFrame::write_payload(code, "", &mut payload);
            }
            self.send_close_payload(ctx, payload.freeze());
        }
        self.acc.clear();
        self.report_close(ctx, code, &reason);
        self.enter_draining(ctx, true);
    }
}
