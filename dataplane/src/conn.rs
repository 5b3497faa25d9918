//! One Kafka client connection: reads size-prefixed request frames, runs each request as its
//! own task (so requests pipeline) that takes effect in the order read ([`crate::order`]), and
//! writes the responses strictly in request order, as Kafka requires.
//!
//! Generic over the byte stream ([`serve`] takes anything readable and writable), so a TLS
//! stream can wrap the socket; what the requests share is the [`ConnContext`].
//!
//! Bad input closes the connection and nothing else: a length prefix that is negative or over
//! `socket.request.max.bytes`, a frame cut short by EOF, an unknown API key or version, or a
//! body that does not decode. Other connections are unaffected.

use crate::api::{self, Reply};
use crate::context::ConnContext;
use crate::metrics::M;
use crate::order::Order;
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

thread_local! {
    /// Connection ids: a shard is one thread, so they are unique among the shard's connections,
    /// which is what the coordinator needs to keep each connection's requests in order.
    static NEXT_CONN_ID: Cell<u64> = const { Cell::new(1) };
}

/// Requests of one connection being worked on at once, and the bytes of their frames; past
/// either, the connection is not read further until the oldest is answered (backpressure,
/// bounded memory). The count is generous because produce requests wait for their WAL commit:
/// a client that pipelines many small requests (librdkafka with linger.ms=0 builds them before
/// it sees any backpressure) must not be throttled to one flush interval per few requests.
const MAX_INFLIGHT: usize = 4096;
const MAX_INFLIGHT_BYTES: u64 = 64 << 20;
/// A frame's body is read in pieces of at most this size, so a client that announces a large
/// frame and then sends nothing cannot make us allocate the whole announced size.
const READ_STEP: usize = 1 << 20;

/// Serves a connection until the client closes it or sends something unacceptable.
pub async fn serve<S>(shard: Rc<Shard>, stream: S, peer_addr: Option<SocketAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let conn = ConnContext::new(NEXT_CONN_ID.with(|n| n.replace(n.get() + 1)), peer_addr);
    let peer = conn.peer.map(|a| a.to_string()).unwrap_or_default();
    let mut order = Order::new();
    shard.metrics.add(M::Connections, 1);
    // Bytes both ways, counted for the zone the client names (until its client id changes).
    let traffic = Rc::new(RefCell::new(shard.traffic.counter(None)));
    // Requests read and not yet answered (a draining data plane waits for them).
    let pending = Rc::new(Cell::new(0u64));
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded::<glommio::Task<Reply>>(MAX_INFLIGHT);
    let (w_traffic, w_pending, w_shard) = (traffic.clone(), pending.clone(), shard.clone());
    let writer = glommio::spawn_local(async move {
        while let Some(task) = rx.recv().await {
            let reply = task.await;
            let done = match reply {
                Reply::Send(bytes) => {
                    w_traffic.borrow().add_sent(bytes.len());
                    wr.write_all(&bytes).await.is_ok()
                }
                Reply::Nothing => true,
                Reply::Close => false,
            };
            w_pending.set(w_pending.get() - 1);
            w_shard.metrics.sub(M::InFlight, 1);
            if !done {
                break;
            }
        }
        let _ = wr.close().await;
    });
    let max = shard.cfg.socket_request_max_bytes;
    let budget = Rc::new(glommio::sync::Semaphore::new(MAX_INFLIGHT_BYTES));
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > max {
            tracing::warn!(%peer, len, max, "request size over socket.request.max.bytes; closing connection");
            break;
        }
        let len = len as usize;
        let Ok(permit) = budget.acquire_static_permit((len as u64).min(MAX_INFLIGHT_BYTES)).await else { break };
        let mut buf = BytesMut::with_capacity(len.min(READ_STEP));
        let mut short = false;
        while buf.len() < len {
            let start = buf.len();
            let end = (start + READ_STEP).min(len);
            buf.resize(end, 0);
            if rd.read_exact(&mut buf[start..end]).await.is_err() {
                short = true;
                break;
            }
        }
        if short {
            tracing::warn!(%peer, len, "connection closed in the middle of a request frame");
            break;
        }
        let req = match api::parse(buf.freeze()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad request; closing connection");
                break;
            }
        };
        if conn.saw_client_id(req.header.client_id.as_deref()) {
            *traffic.borrow_mut() = shard.traffic.counter(conn.zone().as_deref());
        }
        traffic.borrow().add_received(4 + len);
        pending.set(pending.get() + 1);
        shard.metrics.add(M::InFlight, 1);
        let (s, c, turn) = (shard.clone(), conn.clone(), order.next());
        let task = glommio::spawn_local(async move {
            let reply = api::handle(s, req, c, turn).await;
            drop(permit);
            reply
        });
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    // Requests the writer never answered (it stopped early).
    shard.metrics.sub(M::InFlight, pending.get());
    shard.metrics.sub(M::Connections, 1);
}
