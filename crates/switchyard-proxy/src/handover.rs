//! Binary upgrade, the data plane's half: the listening sockets a process
//! hands to its successor, a gateway started on sockets it was handed, and
//! the retirement of the process that handed them over.
//!
//! The Unix-socket protocol between the two processes lives in the binary
//! (`switchyard/src/upgrade.rs`); here sockets are plain file descriptors.
//!
//! A listening socket passed this way is the same kernel socket in both
//! processes: connections waiting in its accept queue are taken by whichever
//! process accepts first, and none is refused while either still listens.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_config::Config;

use crate::server::{ListenOn, Socket};
use crate::{ApplyError, Gateway};

/// A listening socket on its way between processes.
#[derive(Debug)]
pub struct PassedSocket {
    /// The listener's name in the configuration that bound it.
    pub name: String,
    /// The address the configuration asked for (may have port 0).
    pub configured: SocketAddr,
    pub udp: bool,
    pub fd: OwnedFd,
}

impl PassedSocket {
    fn listen_on(&self) -> ListenOn {
        ListenOn {
            address: self.configured,
            udp: self.udp,
        }
    }

    /// The socket as a non-blocking tokio socket of its kind.
    pub(crate) fn adopt(self) -> std::io::Result<Socket> {
        if self.udp {
            let socket = std::net::UdpSocket::from(self.fd);
            socket.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(socket).map(Socket::Udp)
        } else {
            let socket = std::net::TcpListener::from(self.fd);
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket).map(Socket::Tcp)
        }
    }
}

/// Sockets handed over by a predecessor, waiting for the listeners of the
/// first configuration to claim them.
#[derive(Debug, Default)]
pub(crate) struct Inherited(Vec<PassedSocket>);

impl Inherited {
    /// The socket for listener `name` on `on`: the one that listener had
    /// (same name and configured address), else any on the same configured
    /// address. A listener with port 0 keeps the port it had this way.
    pub(crate) fn take(&mut self, name: &str, on: ListenOn) -> Option<PassedSocket> {
        let index = self
            .0
            .iter()
            .position(|s| s.name == name && s.listen_on() == on)
            .or_else(|| self.0.iter().position(|s| s.listen_on() == on))?;
        Some(self.0.swap_remove(index))
    }

    /// Closes what no listener claimed (the new configuration dropped it).
    fn close_rest(&mut self) {
        for socket in self.0.drain(..) {
            tracing::info!(
                listener = %socket.name,
                address = %socket.configured,
                "a socket handed over is not in this configuration: closed"
            );
        }
    }
}

impl Gateway {
    /// [`Gateway::start`] on sockets a predecessor handed over: listeners
    /// whose address matches take one instead of binding; the others bind
    /// as usual, and handed-over sockets no listener wants are closed.
    pub async fn start_inheriting(config: Config, sockets: Vec<PassedSocket>) -> Result<Gateway, ApplyError> {
        let gateway = Gateway::start_with(config, Inherited(sockets)).await?;
        gateway
            .shared
            .inherited
            .lock()
            .expect("inherited sockets lock is never poisoned")
            .close_rest();
        Ok(gateway)
    }

    /// Duplicates of every listening socket, for a successor process.
    pub async fn passable_sockets(&self) -> std::io::Result<Vec<PassedSocket>> {
        let bound = self.shared.listeners.lock().await;
        let mut sockets = Vec::with_capacity(bound.len());
        for (name, listener) in bound.iter() {
            sockets.push(PassedSocket {
                name: name.clone(),
                configured: listener.configured.address,
                udp: listener.configured.udp,
                fd: listener.fd.as_fd().try_clone_to_owned()?,
            });
        }
        Ok(sockets)
    }

    /// Retires this process after a successor took its sockets over: stops
    /// accepting (the sockets stay open in the successor), closes HTTP/2
    /// connections with GOAWAY, and HTTP/1 ones after their next response or
    /// once idle, and lets long-lived streams (WebSocket, SSE, TCP, UDP
    /// sessions) run until they end or `deadline`. No reload is taken from
    /// then on. Returns whether everything ended before the deadline.
    pub async fn retire(&self, deadline: Duration) -> bool {
        let shared = &self.shared;
        {
            // Held while retiring starts, so that no reload binds anew.
            let mut bound = shared.listeners.lock().await;
            // Set before the listeners stop: their connections read it to
            // retire rather than drain.
            shared.draining.store(true, Ordering::SeqCst);
            shared.retiring.store(true, Ordering::SeqCst);
            // The accept loops stop and close their sockets, and this
            // process's copies go too: a socket the successor did not take
            // is then closed, refusing connections rather than queueing them.
            for (_, listener) in bound.drain() {
                listener.stop.cancel();
            }
        }
        shared.tracker.close();
        let ended = tokio::time::timeout(deadline, shared.tracker.wait()).await.is_ok();
        shared.drain.cancel();
        ended
    }

    /// Whether this process handed its sockets to a successor and is on its
    /// way out.
    pub fn is_retiring(&self) -> bool {
        self.shared.retiring.load(Ordering::SeqCst)
    }

    /// Open client connections and the long-lived streams that outlive them
    /// (WebSocket tunnels): what a retiring process still serves.
    pub fn open_connections(&self) -> usize {
        self.shared.tracker.len()
    }
}

/// The process this one took over from, as its reports tell.
#[derive(Debug, Clone)]
pub(crate) struct Predecessor {
    pid: u32,
    /// Connections it still serves; `None` before its first report.
    connections: Option<usize>,
    since: std::time::SystemTime,
    exited: Option<std::time::SystemTime>,
}

impl Gateway {
    /// Records the previous process's latest report.
    pub fn set_predecessor(&self, pid: u32, connections: Option<usize>) {
        let mut predecessor = self
            .shared
            .predecessor
            .lock()
            .expect("predecessor lock is never poisoned");
        match predecessor.as_mut().filter(|p| p.pid == pid) {
            Some(known) => known.connections = connections.or(known.connections),
            None => {
                *predecessor = Some(Predecessor {
                    pid,
                    connections,
                    since: std::time::SystemTime::now(),
                    exited: None,
                })
            }
        }
    }

    /// Records that the previous process has exited.
    pub fn predecessor_exited(&self, pid: u32) {
        let mut predecessor = self
            .shared
            .predecessor
            .lock()
            .expect("predecessor lock is never poisoned");
        if let Some(known) = predecessor.as_mut().filter(|p| p.pid == pid) {
            known.exited = Some(std::time::SystemTime::now());
            known.connections = Some(0);
        }
    }

    /// This process and the one it replaced (`GET /api/processes`): what
    /// each still serves, and which routes drain connections after a reload.
    pub fn processes(&self) -> serde_json::Value {
        let at = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let this = serde_json::json!({
            "pid": std::process::id(),
            "state": if self.is_retiring() { "retiring" } else if self.is_draining() { "draining" } else { "serving" },
            "open_connections": self.open_connections(),
            "draining_routes": self.draining_routes(),
        });
        let previous: Vec<serde_json::Value> = self
            .shared
            .predecessor
            .lock()
            .expect("predecessor lock is never poisoned")
            .iter()
            .map(|p| {
                serde_json::json!({
                    "pid": p.pid,
                    "state": if p.exited.is_some() { "exited" } else { "draining" },
                    "open_connections": p.connections,
                    "since": at(p.since),
                    "exited": p.exited.map(at),
                })
            })
            .collect();
        serde_json::json!({ "this": this, "previous": previous })
    }
}

impl Gateway {
    /// Routes removed by a reload whose WebSocket connections still drain.
    pub fn draining_routes(&self) -> serde_json::Value {
        self.shared
            .registry
            .lock()
            .expect("registry lock is never poisoned")
            .draining_routes()
    }
}
