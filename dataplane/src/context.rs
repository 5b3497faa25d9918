//! What one Kafka connection's requests share: who is on the other end. Handed to every
//! handler with its request, so a later listener (TLS, SASL) adds what it learns here instead
//! of bolting fields onto requests.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// The principal of a connection nobody authenticated, as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// One connection's context.
pub struct ConnContext {
    /// Unique among this shard's connections: names the connection to the coordinator.
    pub id: u64,
    /// The client's address, when the stream has one.
    pub peer: Option<SocketAddr>,
    /// The client's IP address as text (group APIs report it as the member's host).
    pub peer_ip: Rc<str>,
    /// The `client.id` of the connection's latest request (clients send it with each one).
    pub client_id: RefCell<Rc<str>>,
    /// The zone that client id names ([`sluice_rpc::routing::client_zone`]), if any.
    pub zone: RefCell<Option<Rc<str>>>,
    /// Who the client authenticated as; [`ANONYMOUS`] on a plaintext listener.
    #[allow(dead_code)] // Set by an authenticating listener (SASL, mTLS), read by authorization.
    pub principal: RefCell<Rc<str>>,
    /// When the last forwarded request gives up waiting for its answer. A forwarded request
    /// queues behind the earlier ones of its connection in the coordinator (a Heartbeat behind
    /// a JoinGroup that waits for the whole group), so its own wait starts from there.
    pub forward_deadline: Cell<Instant>,
}

impl ConnContext {
    /// A new connection's context.
    pub fn new(id: u64, peer: Option<SocketAddr>) -> Rc<Self> {
        Rc::new(ConnContext {
            id,
            peer,
            peer_ip: Rc::from(peer.map(|a| a.ip().to_string()).unwrap_or_default()),
            client_id: RefCell::new(Rc::from("")),
            zone: RefCell::new(None),
            principal: RefCell::new(Rc::from(ANONYMOUS)),
            forward_deadline: Cell::new(Instant::now()),
        })
    }

    /// Notes the client id a request carries (kept as is when unchanged, which is the rule);
    /// true when it changed.
    pub fn saw_client_id(&self, id: Option<&str>) -> bool {
        let id = id.unwrap_or("");
        if &**self.client_id.borrow() == id {
            return false;
        }
        *self.client_id.borrow_mut() = Rc::from(id);
        *self.zone.borrow_mut() = sluice_rpc::routing::client_zone(id).map(Rc::from);
        true
    }

    /// The client's zone, if its client id names one.
    pub fn zone(&self) -> Option<Rc<str>> {
        self.zone.borrow().clone()
    }
}
