//! The process lifecycle of `switchyard run`: start, reload (SIGHUP, file
//! change), binary upgrade (`switchyard upgrade`, SIGUSR2), drain on
//! SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use notify::{RecursiveMode, Watcher};
use switchyard_config::Config;
use switchyard_proxy::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::upgrade::{self, Inheritance, Relaunch, Request, UpgradeSocket};

/// `switchyard run --config FILE`. Started by an upgrade (the environment
/// names the old process's upgrade socket), it takes the old process's
/// sockets over before it serves.
pub fn run_file(path: PathBuf) -> anyhow::Result<()> {
    let config = switchyard_config::load_file(&path).map_err(|d| anyhow!("invalid configuration:\n{d}"))?;
    let relaunch = Relaunch::capture()?;
    let inheritance = match std::env::var_os(upgrade::FROM_ENV) {
        Some(socket) => Some(upgrade::take_over(Path::new(&socket)).context("taking over from the running process")?),
        None => None,
    };
    let runtime = build_runtime(config.runtime.workers)?;
    runtime.block_on(serve(config, Some(path), Some((relaunch, inheritance))))
}

/// The async runtime: `workers` threads (0: one per core). With one worker, a
/// current-thread scheduler: no work stealing to pay for when there is nobody
/// to steal from.
pub fn build_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            builder.worker_threads(workers);
        }
        builder
    };
    builder
        .enable_all()
        .thread_name("switchyard-worker")
        .build()
        .context("starting the async runtime")
}

/// Starts the gateway and the admin API: on the sockets a predecessor handed
/// over, if any, else bound afresh.
async fn start(
    config: Config,
    inheritance: Option<Inheritance>,
) -> anyhow::Result<(Gateway, Option<switchyard_admin::AdminServer>, Option<Inheritance>)> {
    let admin_settings = config.admin.clone();
    let (gateway, inherited_admin, inheritance) = match inheritance {
        Some(mut inheritance) => {
            let listeners = std::mem::take(&mut inheritance.listeners);
            let admin = inheritance.admin.take();
            let gateway = Gateway::start_inheriting(config, listeners)
                .await
                .context("starting listeners")?;
            (gateway, admin, Some(inheritance))
        }
        None => (Gateway::start(config).await.context("starting listeners")?, None, None),
    };
    let admin = match &admin_settings {
        Some(settings) => {
            // The admin socket carries over when its address did not change.
            let fd = inherited_admin
                .filter(|(configured, _)| *configured == settings.listen)
                .map(|(_, fd)| fd);
            Some(
                switchyard_admin::start_on(settings, gateway.clone(), fd)
                    .await
                    .with_context(|| format!("starting the admin API on {}", settings.listen))?,
            )
        }
        None => None,
    };
    Ok((gateway, admin, inheritance))
}

/// How the serve loop ended.
enum Exit {
    /// SIGTERM or SIGINT: drain and exit.
    Shutdown,
    /// A successor took the sockets over: retire.
    Upgraded(upgrade::Successor),
}

/// Serves `config` until SIGTERM or SIGINT, then drains. With `path`, reloads
/// from that file on SIGHUP and whenever it changes. With `upgrades` (how
/// this process was started, and what a predecessor handed over), listens
/// on the upgrade socket and upgrades on request or SIGUSR2.
pub async fn serve(
    config: Config,
    path: Option<PathBuf>,
    upgrades: Option<(Relaunch, Option<Inheritance>)>,
) -> anyhow::Result<()> {
    let (relaunch, inheritance) = match upgrades {
        Some((relaunch, inheritance)) => (Some(relaunch), inheritance),
        None => (None, None),
    };
    let successor_of = inheritance.as_ref().map(|i| i.predecessor);
    let (gateway, mut admin, inheritance) = start(config, inheritance).await?;
    // Everything that can fail comes before a predecessor is told this
    // process serves: after that, it stops accepting.
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut user2 = signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;
    // Without a file, a channel that never yields (its sender lives here).
    let (_no_changes, idle) = mpsc::channel(1);
    let (_watcher, mut changes) = match &path {
        Some(path) => {
            let (watcher, rx) = watch(path)?;
            (Some(watcher), rx)
        }
        None => (None, idle),
    };
    let mut last_text = match &path {
        Some(path) => tokio::fs::read_to_string(path).await.ok(),
        None => None,
    };
    // Certificates and keys the configuration names: a change to one (say, a
    // renewal) reloads, so new connections get the new certificate.
    let (mut _material_watcher, mut material_changes) = watch_files(&material_files(&gateway.config()));
    if let Some(inheritance) = inheritance {
        inheritance.ready(gateway.clone())?;
        tracing::info!(
            previous = successor_of.unwrap_or_default(),
            "upgrade: serving on the sockets of the previous process"
        );
    }
    // Only now, once this process serves, does it take the upgrade socket's
    // path and the pid file: a successor that fails before `ready` leaves
    // both to the process that goes on serving.
    let pid_file = gateway.config().runtime.pid_file.clone();
    if let Some(file) = &pid_file {
        match (write_pid_file(file), successor_of) {
            (Ok(()), _) => {}
            // Serving already, and the predecessor is on its way out: say
            // so rather than stop.
            (Err(error), Some(_)) => tracing::error!(error = format!("{error:#}"), "pid file not written"),
            (Err(error), None) => return Err(error),
        }
    }
    // The upgrade socket: taken over from a predecessor (whose file it is
    // still), or fresh.
    let upgrade_socket = match (&relaunch, &path) {
        (Some(_), Some(path)) => {
            let socket = switchyard_config::upgrade_socket_for(&gateway.config().runtime, path);
            match UpgradeSocket::bind(&socket, successor_of.is_some()) {
                Ok(Some(socket)) => Some(socket),
                Ok(None) => {
                    tracing::warn!(socket = %socket.display(), "another running switchyard has this upgrade socket: this process cannot be upgraded");
                    None
                }
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "no upgrade socket: this process cannot be upgraded"
                    );
                    None
                }
            }
        }
        _ => None,
    };

    let exit = loop {
        // An upgrade asked for, with where to answer (SIGUSR2: the log).
        let mut upgrade_asked: Option<Option<tokio::net::UnixStream>> = None;
        tokio::select! {
            _ = terminate.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break Exit::Shutdown; }
            _ = interrupt.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break Exit::Shutdown; }
            _ = hangup.recv() => {
                if let Some(path) = &path {
                    reload(&gateway, path, "SIGHUP", &mut last_text, true).await;
                }
            }
            _ = user2.recv() => upgrade_asked = Some(None),
            request = next_request(upgrade_socket.as_ref()) => match request {
                Request::Upgrade { reply } => upgrade_asked = Some(Some(reply)),
                Request::TakeOver { mut stream, .. } => {
                    let _ = stream.write_all(b"error no upgrade is in progress\n").await;
                }
            },
            Some(()) = changes.recv() => {
                // Editors write in several steps: let them finish, then read once.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while changes.try_recv().is_ok() {}
                if let Some(path) = &path {
                    reload(&gateway, path, "file change", &mut last_text, false).await;
                }
            }
            Some(()) = material_changes.recv() => {
                tokio::time::sleep(Duration::from_millis(150)).await;
                while material_changes.try_recv().is_ok() {}
                if let Some(path) = &path {
                    reload(&gateway, path, "certificate change", &mut last_text, true).await;
                }
            }
        }
        if let Some(reply) = upgrade_asked {
            let handed = match (&upgrade_socket, &relaunch) {
                (Some(socket), Some(relaunch)) => {
                    let config = gateway.config();
                    let admin = config.admin.as_ref().zip(admin.as_ref());
                    let handing = upgrade::hand_over(socket, relaunch, &gateway, admin, config.runtime.upgrade_timeout);
                    // A signal to stop abandons the upgrade (the new
                    // process is stopped) and shuts down as usual.
                    tokio::select! {
                        handed = handing => handed,
                        _ = terminate.recv() => {
                            tracing::info!(signal = "SIGTERM", "upgrade abandoned; shutting down");
                            break Exit::Shutdown;
                        }
                        _ = interrupt.recv() => {
                            tracing::info!(signal = "SIGINT", "upgrade abandoned; shutting down");
                            break Exit::Shutdown;
                        }
                    }
                }
                _ => Err(anyhow!("this process has no upgrade socket (see its start-up log)")),
            };
            match handed {
                Ok(successor) => {
                    // The admin socket is the successor's now: stop taking
                    // admin calls before saying the upgrade is done.
                    if let Some(admin) = admin.take() {
                        // Its socket lives on in the successor; this
                        // process lets go of its copy.
                        admin.stop();
                    }
                    let message = format!(
                        "ok process {} serves; process {} drains {} open connection(s) for up to {:?}\n",
                        successor.pid,
                        std::process::id(),
                        gateway.open_connections(),
                        gateway.config().runtime.upgrade_drain_timeout
                    );
                    if let Some(mut reply) = reply {
                        let _ = reply.write_all(message.as_bytes()).await;
                    }
                    break Exit::Upgraded(successor);
                }
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "upgrade failed; this process serves on");
                    if let Some(mut reply) = reply {
                        let line = format!("error {error:#}").replace('\n', " ");
                        let _ = reply.write_all(format!("{line}\n").as_bytes()).await;
                    }
                }
            }
        }
        // The set of files to watch follows the configuration.
        (_material_watcher, material_changes) = watch_files(&material_files(&gateway.config()));
    };
    if let (Some(socket), Exit::Shutdown) = (&upgrade_socket, &exit) {
        // Ours to remove; after an upgrade the file is the successor's.
        let _ = std::fs::remove_file(socket.path());
    }
    drop(upgrade_socket);

    let upgraded = matches!(exit, Exit::Upgraded(_));
    let clean = match exit {
        Exit::Shutdown => {
            let drain_timeout = gateway.config().runtime.drain_timeout;
            tracing::info!(timeout = ?drain_timeout, "draining in-flight requests");
            // A second SIGTERM/SIGINT during the drain means "now".
            tokio::select! {
                clean = gateway.shutdown(drain_timeout) => clean,
                _ = terminate.recv() => { tracing::warn!("second signal: exiting without waiting"); false }
                _ = interrupt.recv() => { tracing::warn!("second signal: exiting without waiting"); false }
            }
        }
        Exit::Upgraded(successor) => {
            let config = gateway.config();
            let deadline = config.runtime.upgrade_drain_timeout;
            tracing::info!(
                successor = successor.pid,
                open = gateway.open_connections(),
                deadline = ?deadline,
                "upgrade: the new process serves; this one stops accepting and drains"
            );
            // A first SIGTERM/SIGINT shortens the drain to drain_timeout; a
            // second ends it at once.
            let retiring = successor.report_until(&gateway, gateway.retire(deadline));
            tokio::pin!(retiring);
            let shortened = tokio::select! {
                clean = &mut retiring => Some(clean),
                _ = terminate.recv() => None,
                _ = interrupt.recv() => None,
            };
            match shortened {
                Some(clean) => clean,
                None => {
                    tracing::info!(timeout = ?config.runtime.drain_timeout, "signal while retiring: draining for up to drain_timeout");
                    tokio::select! {
                        clean = &mut retiring => clean,
                        _ = tokio::time::sleep(config.runtime.drain_timeout) => false,
                        _ = terminate.recv() => { tracing::warn!("second signal: exiting without waiting"); false }
                        _ = interrupt.recv() => { tracing::warn!("second signal: exiting without waiting"); false }
                    }
                }
            }
        }
    };
    if let Some(admin) = admin {
        admin.stop();
    }
    if let (Some(file), false) = (&pid_file, upgraded) {
        // After an upgrade the file is the successor's.
        remove_pid_file(file);
    }
    if clean {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; closing the remaining connections");
    }
    Ok(())
}

/// The next request on the upgrade socket; never, without one.
async fn next_request(socket: Option<&UpgradeSocket>) -> Request {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// Writes this process's id to `file` (a successor overwrites it), in one
/// step: a reader never sees a half-written file.
fn write_pid_file(file: &Path) -> anyhow::Result<()> {
    let partial = file.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&partial, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("writing the pid file {}", file.display()))
}

/// Removes `file` if it still names this process (not its successor).
fn remove_pid_file(file: &Path) {
    let ours = std::fs::read_to_string(file).is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(file);
    }
}

/// Reads, validates and applies the file. A bad file keeps the running config.
/// With `force` false, an unchanged file is not applied again.
async fn reload(gateway: &Gateway, path: &Path, trigger: &str, last_text: &mut Option<String>, force: bool) {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(trigger, %error, file = %path.display(), "reload failed: cannot read the file; keeping the running configuration");
            gateway.count_rejected_reload(format!("{trigger}: cannot read {}: {error}", path.display()));
            return;
        }
    };
    if !force && last_text.as_deref() == Some(text.as_str()) {
        return;
    }
    *last_text = Some(text.clone());
    // Off the thread that serves (with one worker, this one): a large file
    // takes tens of milliseconds.
    let name = path.display().to_string();
    let parsed = tokio::task::spawn_blocking(move || switchyard_config::parse_toml(&text, &name)).await;
    let config = match parsed.expect("parsing a configuration does not panic") {
        Ok(config) => config,
        Err(diagnostics) => {
            for d in diagnostics.iter() {
                tracing::error!(trigger, problem = %d, "invalid configuration");
            }
            tracing::error!(
                trigger,
                errors = diagnostics.len(),
                "reload rejected; keeping the running configuration"
            );
            let first = diagnostics.iter().next().map(ToString::to_string).unwrap_or_default();
            gateway.count_rejected_reload(format!(
                "{trigger}: {} error(s) in {}; first: {first}",
                diagnostics.len(),
                path.display()
            ));
            return;
        }
    };
    let running = gateway.config();
    if config.runtime.workers != running.runtime.workers {
        tracing::warn!("runtime.workers changed: takes effect on restart only");
    }
    if config.admin.as_ref().map(|a| a.listen) != running.admin.as_ref().map(|a| a.listen) {
        tracing::warn!("admin.listen changed: takes effect on restart only");
    }
    match gateway.apply_file(config, trigger).await {
        Ok(version) => tracing::info!(trigger, version, "configuration reloaded"),
        Err(error) => {
            tracing::error!(trigger, %error, "reload failed; keeping the running configuration")
        }
    }
}

/// The TLS and key files a configuration reads at load time.
fn material_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            for (cert, key) in &tls.certificates {
                files.push(PathBuf::from(cert));
                files.push(PathBuf::from(key));
            }
            files.extend(tls.client_ca.iter().map(PathBuf::from));
        }
    }
    for cluster in &config.clusters {
        if let Some(tls) = &cluster.tls {
            files.extend(tls.ca.iter().map(PathBuf::from));
            if let Some((cert, key)) = &tls.client_cert {
                files.push(PathBuf::from(cert));
                files.push(PathBuf::from(key));
            }
        }
    }
    for route in &config.routes {
        if let Some(switchyard_config::JwtKey::PublicKey { path, .. }) =
            route.auth.as_ref().and_then(|a| a.jwt.as_ref()).map(|j| &j.key)
        {
            files.push(PathBuf::from(path));
        }
    }
    files
}

/// Watches `files` (through their directories, as for the config file) and
/// signals when one changes. No files, or a watch that cannot start: a
/// channel that never yields (SIGHUP still reloads).
fn watch_files(files: &[PathBuf]) -> (Option<notify::RecommendedWatcher>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel(16);
    let files: Vec<PathBuf> = files.iter().filter_map(|f| f.canonicalize().ok()).collect();
    if files.is_empty() {
        return (None, rx);
    }
    let wanted = files.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| wanted.iter().any(|w| w == p));
            if ours && !event.kind.is_access() {
                let _ = tx.try_send(());
            }
        }
    });
    let Ok(mut watcher) = watcher else {
        tracing::warn!("cannot watch certificate files: renewals need SIGHUP");
        return (None, rx);
    };
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %dir.display(), "cannot watch certificate files: renewals need SIGHUP");
        }
    }
    (Some(watcher), rx)
}

/// Watches the directory holding `path` (editors often replace the file, which
/// a watch on the file itself would lose) and signals changes to it.
fn watch(path: &Path) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(16);
    let file = path
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| p.file_name() == name.as_deref());
            if ours && !event.kind.is_access() {
                let _ = tx.try_send(());
            }
        }
    })
    .context("starting the config file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((watcher, rx))
}
