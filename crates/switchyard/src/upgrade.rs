//! Zero-downtime binary upgrade: `switchyard upgrade` or SIGUSR2.
//!
//! A running process listens on a Unix socket (the *upgrade socket*,
//! `runtime.upgrade_socket`). On `upgrade` it starts its binary again (the
//! file at the path it was started from, so a newly installed binary), with
//! the same arguments and `SWITCHYARD_UPGRADE_FROM` naming the socket. The
//! successor connects back, says `takeover`, and receives every listening
//! socket, the admin API's included, as file descriptors (`SCM_RIGHTS`).
//! It starts serving on them and says `ready`; only then does the old
//! process stop accepting and retire: the sockets never close, so no
//! connection attempt is refused. The old process then reports how many
//! connections it still serves, once a second, until it exits; that report
//! is what the successor's admin API shows under `previous`.
//!
//! Both ends check the peer's credentials: only the same user may ask for
//! an upgrade, and only the child just started may take the sockets.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use switchyard_proxy::handover::PassedSocket;
use switchyard_proxy::Gateway;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Names the upgrade socket in a successor's environment.
pub const FROM_ENV: &str = "SWITCHYARD_UPGRADE_FROM";

/// The most descriptors one `SCM_RIGHTS` message carries on Linux.
const MAX_SOCKETS: usize = 253;
/// How often a retiring process reports to its successor.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a request on the upgrade socket may take to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a process hands over, besides the descriptors themselves (sent in
/// the same order: the listeners, then the admin socket).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    pid: u32,
    listeners: Vec<ListenerEntry>,
    /// The admin API's configured address, when its socket is included.
    admin: Option<SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ListenerEntry {
    name: String,
    configured: SocketAddr,
    udp: bool,
}

/// A retiring process's report to its successor.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    connections: usize,
}

/// How this process was started, to start its successor the same way. Taken
/// at start: once a new binary is installed over the old one, the running
/// process's own executable shows as deleted, but the path names the new one.
#[derive(Debug, Clone)]
pub struct Relaunch {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Relaunch {
    /// The path this process was started by (not resolved through
    /// symlinks, so that a deploy that switches a symlink upgrades to the
    /// binary it now points to), and its arguments.
    pub fn capture() -> anyhow::Result<Relaunch> {
        let invoked = std::env::args_os().next().map(PathBuf::from);
        let exe = match invoked {
            Some(path) if path.components().count() > 1 => match path.is_absolute() {
                true => path,
                false => std::env::current_dir()
                    .context("reading the working directory")?
                    .join(path),
            },
            // Found through PATH (or unknown): the kernel's answer.
            _ => std::env::current_exe().context("finding this program's path")?,
        };
        Ok(Relaunch {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// The sockets a successor received, and its line back to the predecessor.
#[derive(Debug)]
pub struct Inheritance {
    pub predecessor: u32,
    pub listeners: Vec<PassedSocket>,
    /// The admin socket and the address it was configured with.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    stream: StdUnixStream,
}

/// The successor's side: connects to the predecessor's upgrade socket and
/// takes its sockets. Blocking; run before the async runtime starts.
pub fn take_over(socket: &Path) -> anyhow::Result<Inheritance> {
    let mut stream = StdUnixStream::connect(socket)
        .with_context(|| format!("connecting to the upgrade socket {}", socket.display()))?;
    same_user(&stream)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"takeover\n")?;

    let mut data = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS + 1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("receiving the sockets")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    // The manifest is one line; the first read may hold only its start.
    let mut line = data[..received.bytes].to_vec();
    let mut reader = BufReader::new(stream.try_clone()?);
    if !line.ends_with(b"\n") {
        reader.read_until(b'\n', &mut line).context("reading the socket list")?;
    }
    let text = String::from_utf8_lossy(&line);
    if let Some(refusal) = text.strip_prefix("error ") {
        bail!("the running process refused: {}", refusal.trim());
    }
    let manifest: Manifest = serde_json::from_str(text.trim()).context("reading the socket list")?;
    let expected = manifest.listeners.len() + usize::from(manifest.admin.is_some());
    if fds.len() != expected {
        bail!(
            "expected {expected} sockets from the running process, received {}",
            fds.len()
        );
    }
    let mut fds = fds.into_iter();
    let listeners = manifest
        .listeners
        .into_iter()
        .zip(fds.by_ref())
        .map(|(entry, fd)| PassedSocket {
            name: entry.name,
            configured: entry.configured,
            udp: entry.udp,
            fd,
        })
        .collect();
    let admin = manifest.admin.zip(fds.next());
    stream.set_read_timeout(None)?;
    Ok(Inheritance {
        predecessor: manifest.pid,
        listeners,
        admin,
        stream,
    })
}

impl Inheritance {
    /// Tells the predecessor that this process serves, then follows its
    /// reports until it exits, keeping `gateway`'s view of it current.
    pub fn ready(self, gateway: Gateway) -> anyhow::Result<()> {
        let mut stream = self.stream;
        let predecessor = self.predecessor;
        // Recorded first: once the old process hears `ready`, the admin API
        // (this process's now) is asked about it.
        gateway.set_predecessor(predecessor, None);
        stream.write_all(b"ready\n").context("telling the running process")?;
        stream.set_nonblocking(true)?;
        let stream = UnixStream::from_std(stream)?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(report) = serde_json::from_str::<Report>(&line) {
                    gateway.set_predecessor(predecessor, Some(report.connections));
                }
            }
            gateway.predecessor_exited(predecessor);
            tracing::info!(pid = predecessor, "the previous process has exited");
        });
        Ok(())
    }
}

/// Refuses a socket whose other end runs as another user: a process that
/// took the socket's path first could otherwise answer for switchyard.
fn same_user(stream: &StdUnixStream) -> anyhow::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(stream).context("reading the peer's credentials")?;
    let ours = rustix::process::getuid();
    if peer.uid != ours {
        bail!(
            "the process on the upgrade socket runs as user {}, not {}: refusing to talk to it",
            peer.uid.as_raw(),
            ours.as_raw()
        );
    }
    Ok(())
}

/// The upgrade socket of a running process.
#[derive(Debug)]
pub struct UpgradeSocket {
    path: PathBuf,
    /// Requests read by the socket's accept task (see [`UpgradeSocket::next`]).
    requests: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Request>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// What came in on the upgrade socket.
pub enum Request {
    /// `switchyard upgrade`, waiting on `reply` for the outcome.
    Upgrade { reply: UnixStream },
    /// A successor that wants the sockets; `pid` is its process id.
    TakeOver { stream: UnixStream, pid: Option<u32> },
}

impl UpgradeSocket {
    /// Listens at `path`. A socket file left by a process that is gone is
    /// replaced; one that a live process answers on is not (that process
    /// keeps it, and this one runs without upgrades: `Ok(None)`).
    pub fn bind(path: &Path, replace_live: bool) -> anyhow::Result<Option<UpgradeSocket>> {
        if let Ok(found) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            // Only ever replace a socket of this user's (never a symlink or
            // another user's file planted at a predictable path).
            if !found.file_type().is_socket() || found.uid() != rustix::process::getuid().as_raw() {
                bail!(
                    "{} exists and is not a socket of this user's: not replacing it",
                    path.display()
                );
            }
            if !replace_live && StdUnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        Ok(Some(UpgradeSocket {
            path: path.to_path_buf(),
            requests: tokio::sync::Mutex::new(rx),
            accepting: tokio::spawn(accept(listener, tx)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request from a process of this user. Cancel-safe: a
    /// request is never lost because its caller stopped waiting.
    pub async fn next(&self) -> Request {
        match self.requests.lock().await.recv().await {
            Some(request) => request,
            // The accept task ended (it never does on its own).
            None => std::future::pending().await,
        }
    }
}

/// Accepts on the upgrade socket, each connection read on a task of its own
/// (a slow client holds up nobody), and hands the requests on. Connections
/// from other users are answered with an error.
async fn accept(listener: UnixListener, requests: tokio::sync::mpsc::Sender<Request>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let credentials = stream.peer_cred().ok();
            if credentials.is_none_or(|c| c.uid() != rustix::process::getuid().as_raw()) {
                let _ = stream
                    .write_all(b"error only the user running switchyard may upgrade it\n")
                    .await;
                return;
            }
            let pid = credentials
                .and_then(|c| c.pid())
                .and_then(|pid| u32::try_from(pid).ok());
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(&mut stream);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
            let request = match (read, line.trim()) {
                (Ok(Ok(_)), "upgrade") => Request::Upgrade { reply: stream },
                (Ok(Ok(_)), "takeover") => Request::TakeOver { stream, pid },
                (Ok(Ok(_)), other) => {
                    let answer = format!("error unknown request {other:?}; expected \"upgrade\"\n");
                    let _ = stream.write_all(answer.as_bytes()).await;
                    return;
                }
                _ => return,
            };
            let _ = requests.send(request).await;
        });
    }
}

/// A successor that took the sockets over and serves.
pub struct Successor {
    pub pid: u32,
    /// The line to it, for the reports of the retiring process.
    stream: UnixStream,
}

/// Starts the successor and hands it the sockets: the old process's side of
/// an upgrade. Requests that arrive meanwhile are answered as busy. On
/// error the successor (if it still runs) is stopped and this process
/// serves on as before.
pub async fn hand_over(
    socket: &UpgradeSocket,
    relaunch: &Relaunch,
    gateway: &Gateway,
    admin: Option<(&switchyard_config::Admin, &switchyard_admin::AdminServer)>,
    timeout: Duration,
) -> anyhow::Result<Successor> {
    let mut child = tokio::process::Command::new(&relaunch.exe)
        .args(&relaunch.args)
        .env(FROM_ENV, socket.path())
        .stdin(std::process::Stdio::null())
        // Killed if the upgrade is abandoned (this future dropped on
        // SIGTERM); kept, below, once it serves.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", relaunch.exe.display()))?;
    let child_pid = child.id().ok_or_else(|| anyhow!("the new process exited at once"))?;
    tracing::info!(pid = child_pid, exe = %relaunch.exe.display(), "upgrade: new process started");

    let outcome = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    bail!("the new process exited ({status}) before it served; its log says why");
                }
                request = socket.next() => match request {
                    Request::TakeOver { stream, pid } if pid == Some(child_pid) => {
                        let stream = send_sockets(stream, gateway, admin).await?;
                        return wait_ready(stream, child_pid, &mut child).await;
                    }
                    Request::TakeOver { mut stream, .. } => {
                        let _ = stream.write_all(b"error only the process started for this upgrade may take the sockets\n").await;
                    }
                    Request::Upgrade { mut reply } => {
                        let _ = reply.write_all(b"error an upgrade is already in progress\n").await;
                    }
                }
            }
        }
    })
    .await;
    let failure = match outcome {
        Ok(Ok(stream)) => {
            // It serves: it must outlive this process, not be killed when
            // the handle goes (it is reparented when this process exits).
            std::mem::forget(child);
            return Ok(Successor { pid: child_pid, stream });
        }
        Ok(Err(error)) => error,
        Err(_) => anyhow!("the new process did not take over within {timeout:?}"),
    };
    if child.try_wait().ok().flatten().is_none() {
        // Ours, started just now: it may already have accepted connections
        // on the shared sockets, so it is asked to drain (SIGTERM) first.
        if let Some(pid) = rustix::process::Pid::from_raw(child_pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    Err(failure)
}

/// Sends the manifest and every listening socket on `stream`.
async fn send_sockets(
    stream: UnixStream,
    gateway: &Gateway,
    admin: Option<(&switchyard_config::Admin, &switchyard_admin::AdminServer)>,
) -> anyhow::Result<UnixStream> {
    let listeners = gateway
        .passable_sockets()
        .await
        .context("duplicating the listening sockets")?;
    let admin = match admin {
        Some((settings, server)) => Some((settings.listen, server.passable_socket()?)),
        None => None,
    };
    if listeners.len() + usize::from(admin.is_some()) > MAX_SOCKETS {
        bail!("more than {MAX_SOCKETS} listening sockets: too many to hand over at once");
    }
    let manifest = Manifest {
        pid: std::process::id(),
        listeners: listeners
            .iter()
            .map(|l| ListenerEntry {
                name: l.name.clone(),
                configured: l.configured,
                udp: l.udp,
            })
            .collect(),
        admin: admin.as_ref().map(|(address, _)| *address),
    };
    let mut line = serde_json::to_vec(&manifest).expect("the manifest serialises");
    line.push(b'\n');
    let fds: Vec<OwnedFd> = listeners
        .into_iter()
        .map(|l| l.fd)
        .chain(admin.map(|(_, fd)| fd))
        .collect();

    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let stream = tokio::task::spawn_blocking(move || -> std::io::Result<StdUnixStream> {
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&borrowed));
        let sent = sendmsg(&stream, &[IoSlice::new(&line)], &mut control, SendFlags::empty())?;
        (&stream).write_all(&line[sent..])?;
        Ok(stream)
        // `fds`, this process's duplicates, close here; the listeners keep theirs.
    })
    .await
    .expect("the hand-over task does not panic")
    .context("sending the sockets")?;
    stream.set_nonblocking(true)?;
    Ok(UnixStream::from_std(stream)?)
}

/// Waits for the successor's `ready`.
async fn wait_ready(stream: UnixStream, pid: u32, child: &mut tokio::process::Child) -> anyhow::Result<UnixStream> {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::select! {
        read = reader.read_line(&mut line) => {
            read.context("waiting for the new process")?;
        }
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!("the new process (pid {pid}) exited ({status}) after it received the sockets; its log says why");
        }
    }
    if line.is_empty() {
        // It closed the line: it is exiting; say how, when it has.
        let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => "without a word".to_owned(),
        };
        bail!("the new process (pid {pid}) exited ({status}) after it received the sockets; its log says why");
    }
    if line.trim() != "ready" {
        bail!("the new process (pid {pid}) did not start: {}", line.trim());
    }
    Ok(reader.into_inner())
}

impl Successor {
    /// Reports the connections this retiring process still serves, once a
    /// second, until `done` completes. The line closes when this process
    /// exits, which the successor takes as its end.
    pub async fn report_until(mut self, gateway: &Gateway, done: impl std::future::Future<Output = bool>) -> bool {
        tokio::pin!(done);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        let mut successor_alive = true;
        let mut scratch = [0u8; 64];
        loop {
            tokio::select! {
                ended = &mut done => return ended,
                // The successor keeps its end open for as long as it runs.
                read = self.stream.read(&mut scratch), if successor_alive => {
                    if matches!(read, Ok(0) | Err(_)) {
                        successor_alive = false;
                        tracing::error!(
                            successor = self.pid,
                            "the new process has exited while this one retires: nothing accepts new connections now; start switchyard again"
                        );
                    }
                }
                _ = tick.tick(), if successor_alive => {
                    let report = Report { connections: gateway.open_connections() };
                    let mut line = serde_json::to_vec(&report).expect("a report serialises");
                    line.push(b'\n');
                    // A successor that stopped listening changes nothing here.
                    let _ = self.stream.write_all(&line).await;
                }
            }
        }
    }
}

/// `switchyard upgrade`: asks the process serving `socket` to upgrade and
/// waits for the outcome. Returns the message to print.
pub fn request(socket: &Path, wait: Duration) -> anyhow::Result<String> {
    let mut stream = StdUnixStream::connect(socket).with_context(|| {
        format!(
            "no running switchyard answers on {} (is it running with this configuration file?)",
            socket.display()
        )
    })?;
    same_user(&stream)?;
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(b"upgrade\n")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("waiting for the upgrade to finish")?;
    let answer = answer.trim();
    match answer.strip_prefix("ok ") {
        Some(message) => Ok(message.to_owned()),
        None => match answer.strip_prefix("error ") {
            Some(error) => bail!("upgrade failed: {error}"),
            None => bail!("upgrade failed: the running process closed the connection without an answer"),
        },
    }
}
