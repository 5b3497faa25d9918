//! A shard's connection to the control plane: one persistent TCP connection, pipelined requests
//! paired with replies by request id, pushed notifications handed to the shard as events, and
//! reconnection (with re-registration) whenever the connection drops.

use futures::channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use sluice_rpc::{body::Body, decode_frame, encode_frame, Envelope, Register, Registered, MAX_FRAME};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::RpcError;
use crate::notify::Notify;
use crate::partition::{SeqFuture, Sequencer};
use sluice_rpc::{CommitWal, CommitWalReply, GetWatermarks, Lookup, LookupReply, Watermark};

/// What the connection hands to its shard.
pub enum Event {
    /// (Re-)registered: the full topic list.
    Registered(Registered),
    /// A pushed notification.
    Note(Body),
}

/// The client. Lives on one shard.
pub struct RpcClient {
    /// Every control plane's address; one leads, the others send data planes to it.
    addrs: Vec<String>,
    /// Where the next connection goes: a standby named the leader, or the next in `addrs`.
    target: RefCell<String>,
    /// Turns through `addrs` when nothing better is known.
    next_addr: Cell<usize>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Body>>>,
    next_id: Cell<u64>,
    out: RefCell<Option<Rc<LocalSender<Vec<u8>>>>>,
    ready: Cell<bool>,
    ready_changed: Notify,
    /// Counts registrations: requests sent under one generation travel, in order, on one
    /// connection.
    generation: Cell<u64>,
    /// The last connection attempt was refused (by the kernel or at registration): a call that
    /// finds no connection says so instead of "timed out".
    refused: Cell<bool>,
    /// Frames of requests sent with [`RpcClient::start_resending`] and not yet answered, by
    /// request id: sent again, in this order, when a new connection is up.
    resend: RefCell<BTreeMap<u64, Vec<u8>>>,
    /// The node id a control plane assigned this data plane, asked for again on reconnecting.
    assigned: Cell<Option<i32>>,
    /// The data plane is draining: a new connection must not list it again.
    pub leaving: Cell<bool>,
}

impl RpcClient {
    /// A client for the control planes at `addrs` (at least one); call [`RpcClient::run`] to
    /// connect.
    pub fn new(addrs: Vec<String>) -> Rc<Self> {
        Rc::new(Self {
            target: RefCell::new(addrs[0].clone()),
            next_addr: Cell::new(0),
            addrs,
            pending: RefCell::default(),
            next_id: Cell::new(1),
            out: RefCell::default(),
            ready: Cell::new(false),
            ready_changed: Notify::default(),
            generation: Cell::new(0),
            refused: Cell::new(false),
            resend: RefCell::default(),
            assigned: Cell::new(None),
            leaving: Cell::new(false),
        })
    }

    /// Sends a request and waits for its reply, waiting for a connection first if there is
    /// none; gives up after `timeout`.
    pub async fn call(&self, body: Body, timeout: Duration) -> Result<Body, RpcError> {
        let deadline = Instant::now() + timeout;
        self.wait_ready(deadline).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.send(body, left).await
    }

    /// Waits for a registered connection.
    async fn wait_ready(&self, deadline: Instant) -> Result<(), RpcError> {
        while !self.ready.get() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if self.refused.get() { RpcError::Refused } else { RpcError::TimedOut });
            }
            let wait = self.ready_changed.notified();
            let _ = glommio::timer::timeout(left, async { Ok(wait.await) }).await;
        }
        Ok(())
    }

    /// The current connection's generation, if connected.
    pub fn generation(&self) -> Option<u64> {
        self.ready.get().then(|| self.generation.get())
    }

    /// Sends a request at once, without waiting, if still connected under `generation` (so it
    /// follows, on the same connection, everything sent before under it). Wait for the answer
    /// with [`RpcClient::finish`].
    pub fn start_on(&self, body: Body, generation: u64) -> Option<(u64, oneshot::Receiver<Body>)> {
        if !self.ready.get() || self.generation.get() != generation {
            return None;
        }
        let out = self.out.borrow().clone()?;
        let (id, rx, frame) = self.prepare(body);
        if out.try_send(frame).is_err() {
            self.pending.borrow_mut().remove(&id);
            return None;
        }
        Some((id, rx))
    }

    /// Sends a request that outlives the connection: if the connection drops before the
    /// answer, the request is sent again on the next one, ahead of anything new and in the
    /// order the requests were first sent (the control plane ends up applying the same
    /// sequence, with at most a repeat of those whose answers were lost). Returns once the
    /// request has its place in that order, so requests started one after another are applied
    /// one after another; wait for the answer with [`RpcClient::finish`].
    pub async fn start_resending(&self, body: Body, deadline: Instant) -> Result<(u64, oneshot::Receiver<Body>), RpcError> {
        self.wait_ready(deadline).await?;
        let (id, rx, frame) = self.prepare(body);
        self.resend.borrow_mut().insert(id, frame.clone());
        let out = self.out.borrow().clone();
        if let Some(out) = out {
            // Err: the connection dropped; the frame goes out again on the next one.
            let _ = out.send(frame).await;
        }
        Ok((id, rx))
    }

    /// Waits for the answer to a request sent with [`RpcClient::start_on`] or
    /// [`RpcClient::start_resending`].
    pub async fn finish(&self, id: u64, rx: oneshot::Receiver<Body>, timeout: Duration) -> Result<Body, RpcError> {
        let r = glommio::timer::timeout(timeout, async { Ok(rx.await) }).await;
        self.pending.borrow_mut().remove(&id);
        self.resend.borrow_mut().remove(&id);
        match r {
            Ok(Ok(body)) => Ok(body),
            // The sender was dropped: the connection went away.
            Ok(Err(_)) => Err(RpcError::Unavailable),
            Err(_) => Err(RpcError::TimedOut),
        }
    }

    /// Gives a request its id, registers where its answer goes, and encodes its frame.
    fn prepare(&self, body: Body) -> (u64, oneshot::Receiver<Body>, Vec<u8>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        (id, rx, encode_frame(&Envelope { request_id: id, body: Some(body) }))
    }

    async fn send(&self, body: Body, timeout: Duration) -> Result<Body, RpcError> {
        let out = self.out.borrow().clone().ok_or(RpcError::Unavailable)?;
        let (id, rx, frame) = self.prepare(body);
        if out.send(frame).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(RpcError::Unavailable);
        }
        self.finish(id, rx, timeout).await
    }

    /// Connects, registers, dispatches replies and notifications, and reconnects forever.
    pub async fn run(self: Rc<Self>, register: Register, events: Rc<LocalSender<Event>>) {
        let mut logged_down = false;
        loop {
            let addr = self.target.borrow().clone();
            let stream = match TcpStream::connect(addr.as_str()).await {
                Ok(s) => s,
                Err(e) => {
                    self.refused
                        .set(matches!(&e, glommio::GlommioError::IoError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused));
                    if !logged_down && register.shard == 0 {
                        tracing::warn!(%addr, error = %e, "control plane unreachable; retrying");
                        logged_down = true;
                    }
                    self.try_next();
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            logged_down = false;
            let _ = stream.set_nodelay(true);
            let (mut rd, mut wr) = futures_lite::io::split(stream);
            let (tx, rx) = local_channel::new_bounded::<Vec<u8>>(1024);
            *self.out.borrow_mut() = Some(Rc::new(tx));
            let writer = glommio::spawn_local(async move {
                while let Some(frame) = rx.recv().await {
                    if wr.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                let _ = wr.close().await;
            });
            let me = self.clone();
            let ev = events.clone();
            let reader = glommio::spawn_local(async move {
                let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
                let mut chunk = vec![0u8; 64 << 10];
                loop {
                    loop {
                        match decode_frame(&buf, MAX_FRAME) {
                            Ok(Some((env, used))) => {
                                buf.drain(..used);
                                me.dispatch(env, &ev).await;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "bad frame from control plane");
                                return;
                            }
                        }
                    }
                    match rd.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
            let mut this = register.clone();
            if let Some(id) = self.assigned.get() {
                (this.node_id, this.assigned) = (id, true);
            }
            this.leaving = self.leaving.get();
            match self.send(Body::Register(this), Duration::from_secs(10)).await {
                Ok(Body::Registered(r)) => {
                    self.refused.set(false);
                    if register.shard == 0 && register.node_id < 0 {
                        self.assigned.set(Some(r.node_id));
                    }
                    let _ = events.send(Event::Registered(r)).await;
                    // Requests whose answers the last connection lost go first, in order.
                    let again: Vec<Vec<u8>> = self.resend.borrow().values().cloned().collect();
                    let out = self.out.borrow().clone();
                    if let Some(out) = out {
                        for frame in again {
                            if out.send(frame).await.is_err() {
                                break;
                            }
                        }
                    }
                    self.generation.set(self.generation.get() + 1);
                    self.ready.set(true);
                    self.ready_changed.notify_all();
                    if register.shard == 0 {
                        tracing::info!(%addr, "connected to control plane");
                    }
                    reader.await;
                    // The leader went away: try the others (one of them will lead, or say who does).
                    self.try_next();
                }
                Ok(Body::Failed(f)) if !f.leader.is_empty() || f.error == i32::from(ResponseError::NotController.code()) => {
                    // A standby: go where it says the leader is, or to the next control plane.
                    if f.leader.is_empty() || f.leader == addr {
                        self.try_next();
                    } else {
                        *self.target.borrow_mut() = f.leader.clone();
                    }
                    if register.shard == 0 {
                        tracing::info!(standby = %addr, leader = %f.leader, "control plane stands by; going to the leader");
                    }
                }
                Ok(Body::Failed(f)) if f.error == i32::from(ResponseError::DuplicateBrokerRegistration.code()) => {
                    // Two data planes with one node id would confuse every client: the second
                    // one stops, with the reason.
                    tracing::error!(message = %f.message, "control plane refused registration");
                    eprintln!("sluice-dataplane: error: {}", f.message);
                    std::process::exit(1);
                }
                Ok(other) => {
                    self.refused.set(true);
                    tracing::error!(reply = ?other, "control plane refused registration");
                }
                Err(_) => tracing::warn!("no answer to registration"),
            }
            // Disconnected: fail what is in flight (callers retry) except what is sent again
            // on the next connection, then reconnect.
            self.ready.set(false);
            self.out.borrow_mut().take();
            {
                let resend = self.resend.borrow();
                self.pending.borrow_mut().retain(|id, _| resend.contains_key(id));
            }
            let _ = writer.await;
            if register.shard == 0 {
                tracing::warn!(%addr, "lost control plane connection; reconnecting");
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Aims the next connection at the next control plane of the list.
    fn try_next(&self) {
        let i = (self.next_addr.get() + 1) % self.addrs.len();
        self.next_addr.set(i);
        *self.target.borrow_mut() = self.addrs[i].clone();
    }

    async fn dispatch(&self, env: Envelope, events: &LocalSender<Event>) {
        let Some(body) = env.body else { return };
        if env.request_id == 0 {
            let _ = events.send(Event::Note(body)).await;
        } else if let Some(tx) = self.pending.borrow_mut().remove(&env.request_id) {
            self.resend.borrow_mut().remove(&env.request_id);
            let _ = tx.send(body);
        }
    }
}

/// The control plane is the partitions' sequencer; commits of one session travel on one
/// connection, in order.
impl Sequencer for RpcClient {
    fn session(&self) -> Option<u64> {
        self.generation()
    }

    fn start_commit(&self, commit: CommitWal, session: u64, timeout: Duration) -> Option<SeqFuture<'_, CommitWalReply>> {
        let (id, rx) = self.start_on(Body::CommitWal(commit), session)?;
        Some(Box::pin(async move {
            match self.finish(id, rx, timeout).await? {
                Body::CommitWalReply(r) => Ok(r),
                _ => Err(RpcError::Unavailable),
            }
        }))
    }

    fn commit(&self, commit: CommitWal, timeout: Duration) -> SeqFuture<'_, CommitWalReply> {
        Box::pin(async move {
            match self.call(Body::CommitWal(commit), timeout).await? {
                Body::CommitWalReply(r) => Ok(r),
                _ => Err(RpcError::Unavailable),
            }
        })
    }

    fn lookup(&self, req: Lookup, timeout: Duration) -> SeqFuture<'_, LookupReply> {
        Box::pin(async move {
            match self.call(Body::Lookup(req), timeout).await? {
                Body::LookupReply(r) => Ok(r),
                _ => Err(RpcError::Unavailable),
            }
        })
    }

    fn watermarks(&self, streams: Vec<u64>, timeout: Duration) -> SeqFuture<'_, Vec<Watermark>> {
        Box::pin(async move {
            match self.call(Body::GetWatermarks(GetWatermarks { streams }), timeout).await? {
                Body::Watermarks(w) => Ok(w.streams),
                _ => Err(RpcError::Unavailable),
            }
        })
    }
}
