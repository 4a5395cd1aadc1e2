//! The send side: applying `Sender` commands, framing messages into the write queue (masked on
//! clients), prepared messages and broadcasts, and the frame and streaming send APIs.

use super::*;

impl<H: Handler> Connection<H> {
    pub(super) fn mask_key(&self, ctx: &mut Ctx<'_>) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(ctx.mask.next_key()),
            Role::Server => None,
        }
    }

    /// Queue a control frame the loop sends on its own (pong, close), accounting its bytes.
    pub(super) fn queue_control(&mut self, ctx: &mut Ctx<'_>, op: OpCode, payload: &Bytes) {
        let key = self.mask_key(ctx);
        let n = self.wq.push_frame(op, true, 0, payload, key);
        ctx.shared.slots.add(self.id.slot as usize, n);
        self.schedule_flush();
    }

    /// Apply a command from a [`Sender`](crate::Sender). `accounted` bytes were reserved for it.
    pub fn apply(&mut self, op: Op, accounted: usize, ctx: &mut Ctx<'_>) -> Drive {
        let slot = self.id.slot as usize;
        let sending = self.phase == Phase::Open && !self.close_sent;
        match op {
            Op::Send(msg) if sending && self.out.kind.is_some() => self.out.deferred.push_back((msg, accounted)),
            Op::Send(msg) if sending => {
                let n = self.queue_message(ctx, &msg);
                self.settle(ctx, accounted, n);
            }
            Op::SendPrepared(p) if sending => {
                let n = self.queue_prepared(ctx, &p);
                self.settle(ctx, accounted, n);
            }
            Op::Ping(p) if sending => {
                let key = self.mask_key(ctx);
                let n = self.wq.push_frame(OpCode::Ping, true, 0, &p, key);
                self.settle(ctx, accounted, n);
            }
            Op::Pong(p) if sending => {
                let key = self.mask_key(ctx);
                let n = self.wq.push_frame(OpCode::Pong, true, 0, &p, key);
                self.settle(ctx, accounted, n);
            }
            Op::BeginMessage(kind) if sending => {
                if self.out.kind.is_some() || self.out.frame_left > 0 {
                    return self.misuse(ctx, "begin_message while a message is in progress");
                }
                self.out.kind = Some(kind);
                self.out.first_sent = false;
            }
            Op::Frame { payload, fin } if sending => {
                if self.out.kind.is_none() || self.out.frame_left > 0 {
                    ctx.shared.slots.release(slot, accounted);
                    return self
                        .misuse(ctx, "send_frame/end_message without begin_message, or inside a streamed frame");
                }
                let n = self.queue_api_frame(ctx, &payload, fin);
                self.settle(ctx, accounted, n);
                if fin {
                    self.send_deferred(ctx);
                }
            }
            Op::FrameHeader { len } if sending => {
                if self.out.kind.is_none() || self.out.frame_left > 0 {
                    ctx.shared.slots.release(slot, accounted);
                    return self.misuse(ctx, "begin_frame without begin_message, or before the previous frame's data");
                }
                let n = self.queue_stream_header(ctx, len);
                self.settle(ctx, accounted, n);
            }
            Op::FrameData(data) if sending => {
                if data.len() as u64 > self.out.frame_left {
                    ctx.shared.slots.release(slot, accounted);
                    return self.misuse(ctx, "send_frame_data beyond the length given to begin_frame");
                }
                let n = self.queue_stream_data(&data);
                self.settle(ctx, accounted, n);
            }
            Op::Close(code, reason) => {
                ctx.shared.slots.release(slot, accounted);
                self.close(ctx, code, &reason);
                if self.phase == Phase::Dead {
                    return Drive::Dead;
                }
            }
            Op::Timeout { delay, token, handle } => ctx.timers.schedule_user(ctx.now, delay, self.id, token, handle),
            Op::Cancel(handle) => ctx.timers.cancel_user(handle),
            Op::Resolved(addrs) => return self.resolved(addrs, ctx),
            _ => ctx.shared.slots.release(slot, accounted),
        }
        Drive::Idle
    }

    /// Account the difference between what a sender reserved and what was queued.
    pub(super) fn settle(&mut self, ctx: &mut Ctx<'_>, reserved: usize, queued: usize) {
        let slot = self.id.slot as usize;
        if queued > reserved {
            ctx.shared.slots.add(slot, queued - reserved);
        } else {
            ctx.shared.slots.release(slot, reserved - queued);
        }
        self.mark_backlog(ctx);
        self.schedule_flush();
        self.flush_if_large(ctx);
    }

    /// Remember that sends took the queue above the low-water mark, so `on_writable` is called
    /// when it drains back, even if the kernel takes it all within this turn.
    fn mark_backlog(&mut self, ctx: &mut Ctx<'_>) {
        if self.wq.len() > ctx.settings.send_queue_low_water {
            self.backlogged = true;
        }
    }

    /// Queue a whole message (split into frames with `auto_fragment_size`). Returns bytes queued.
    pub(super) fn queue_message(&mut self, ctx: &mut Ctx<'_>, msg: &Message) -> usize {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        let payload = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        };
        match ctx.settings.auto_fragment_size {
            Some(size) if size > 0 && payload.len() > size => {
                let mut n = 0;
                let mut off = 0;
                while off < payload.len() {
                    let end = (off + size).min(payload.len());
                    let opcode = if off == 0 { op } else { OpCode::Continuation };
                    let key = self.mask_key(ctx);
                    n += self.wq.push_frame(opcode, end == payload.len(), 0, &payload.slice(off..end), key);
                    off = end;
                }
                n
            }
            _ => {
                let key = self.mask_key(ctx);
                self.wq.push_frame(op, true, 0, payload, key)
            }
        }
    }

    /// Queue a prepared message: by reference on a server, masked per send on a client.
    pub fn queue_prepared(&mut self, ctx: &mut Ctx<'_>, p: &PreparedMessage) -> usize {
        match self.role {
            Role::Server => {
                let frame = p.server_frame().clone();
                let n = frame.len();
                self.wq.push_bytes(frame);
                n
            }
            Role::Client => self.queue_message_single(ctx, p.message()),
        }
    }

    pub(super) fn queue_message_single(&mut self, ctx: &mut Ctx<'_>, msg: &Message) -> usize {
        let op = if msg.is_text() { OpCode::Text } else { OpCode::Binary };
        let payload = msg.clone().into_bytes();
        let key = self.mask_key(ctx);
        self.wq.push_frame(op, true, 0, &payload, key)
    }

    /// Broadcast: queue a prepared message if the connection is open; returns bytes queued.
    pub fn broadcast(&mut self, ctx: &mut Ctx<'_>, p: &PreparedMessage) -> usize {
        if self.phase != Phase::Open || self.close_sent {
            return 0;
        }
        let queued = ctx.shared.slots.buffered(self.id);
        if queued + p.frame_len(self.role == Role::Client) > ctx.settings.max_send_queue {
            // A broadcast has no sender to report `SendQueueFull` to, and silently skipping the
            // message would lose it while the connection stays open: a client this far behind
            // is closed instead (1008), and the rest of the loop goes on.
            log::info!("{} {:?}: send queue full ({queued} bytes) on broadcast, closing", self.id, self.peer);
            self.close(ctx, CloseCode::POLICY_VIOLATION, "send queue full");
            return 0;
        }
        let n = self.queue_prepared(ctx, p);
        ctx.shared.slots.add(self.id.slot as usize, n);
        self.mark_backlog(ctx);
        self.schedule_flush();
        self.flush_if_large(ctx);
        n
    }

    pub(super) fn next_opcode(&mut self) -> OpCode {
        let op = match self.out.kind {
            _ if self.out.first_sent => OpCode::Continuation,
            Some(MessageKind::Text) => OpCode::Text,
            _ => OpCode::Binary,
        };
        self.out.first_sent = true;
        op
    }

    pub(super) fn queue_api_frame(&mut self, ctx: &mut Ctx<'_>, payload: &Bytes, fin: bool) -> usize {
        let opcode = self.next_opcode();
        let key = self.mask_key(ctx);
        let n = self.wq.push_frame(opcode, fin, 0, payload, key);
        if fin {
            self.out.kind = None;
            self.out.first_sent = false;
        }
        n
    }

    pub(super) fn queue_stream_header(&mut self, ctx: &mut Ctx<'_>, len: u64) -> usize {
        let opcode = self.next_opcode();
        let mask = self.mask_key(ctx);
        let header = FrameHeader { fin: false, rsv: 0, opcode, mask, payload_len: len };
        self.out.frame_left = len;
        self.out.frame_mask = mask;
        self.out.frame_offset = 0;
        self.wq.push_header(&header)
    }

    pub(super) fn queue_stream_data(&mut self, data: &Bytes) -> usize {
        let n = self.wq.push_payload(data, self.out.frame_mask, self.out.frame_offset);
        self.out.frame_offset += data.len() as u64;
        self.out.frame_left -= data.len() as u64;
        n
    }

    /// A frame whose header announced more payload than was sent must be completed before any
    /// other frame (the peer counts bytes): pad it with zeros. The message stays unfinished (no
    /// FIN), so the peer never delivers it. Padding is bounded; past the bound the connection is
    /// dropped without a close frame instead.
    pub(super) fn finish_streamed_frame(&mut self, ctx: &mut Ctx<'_>) {
        let left = self.out.frame_left;
        if left == 0 {
            return;
        }
        if left > 1 << 20 {
            log::warn!("{} {:?}: {left} bytes of a streamed frame unsent; dropping the connection", self.id, self.peer);
            self.wq.clear();
            self.phase = Phase::Dead;
            return;
        }
        let pad = Bytes::from(vec![0u8; left as usize]);
        let n = self.queue_stream_data(&pad);
        ctx.shared.slots.add(self.id.slot as usize, n);
    }

    /// Send the whole messages that waited for a frame-API message to end.
    pub(super) fn send_deferred(&mut self, ctx: &mut Ctx<'_>) {
        while let Some((msg, reserved)) = self.out.deferred.pop_front() {
            let n = self.queue_message(ctx, &msg);
            self.settle(ctx, reserved, n);
        }
    }

    /// Local misuse of the frame or streaming API: the bytes on the wire can no longer be
    /// framed correctly, so the connection fails with 1011.
    pub(super) fn misuse(&mut self, ctx: &mut Ctx<'_>, what: &'static str) -> Drive {
        log::error!("{} {:?}: {what}", self.id, self.peer);
        self.fail(ctx, Error::InvalidUse(what));
        if self.phase == Phase::Dead {
            Drive::Dead
        } else {
            Drive::Idle
        }
    }
}
