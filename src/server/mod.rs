//! Start-up and shutdown of `spate serve`: checks what io_uring needs, binds one
//! SO_REUSEPORT listener per core, starts one pinned glommio executor per core joined by a
//! full mesh of bounded channels, loads the catalog on the controller (core 0) and opens
//! every shard on its owner, then serves until SIGINT or SIGTERM. Runs on the main thread;
//! each core's part runs on its executor.

pub mod controller;
pub mod core;
pub mod leases;
pub mod quota;
pub mod requests;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::net;
use crate::runtime;
use crate::server::controller::{ControlRequest, Controller};
use crate::server::core::{Core, CoreMessage, CoreReply, CoreRequest, Port};

/// How often each core runs retention over its shards.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("core {core} failed: {message}")]
    Core { core: usize, message: String },
    #[error("cannot use data folder {path}: {message}")]
    DataDir { path: String, message: String },
}

/// Runs the server until SIGINT or SIGTERM, then shuts down cleanly.
///
/// # Errors
/// [`ServeError`] saying what to change when start-up fails.
pub fn serve(mut config: Config) -> Result<(), ServeError> {
    // glommio opens directories through io_uring, where a relative path (the default
    // ./data) fails with EBADF; every path below the data folder is made from this one.
    config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let memlock = runtime::raise_memlock();
    runtime::check_memlock()?;
    raise_open_files();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let iterator_key = crate::protocol::kinesis::iterator::load_or_create_key(&config.data_dir)
        .map_err(|message| ServeError::DataDir {
            path: config.data_dir.display().to_string(),
            message,
        })?;
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_else(|| (0..num_cpus()).collect());
    let cores = if config.cores == 0 {
        cpus.len().max(1)
    } else {
        config.cores
    };
    let listeners = bind_listeners(config.binary_listen, cores)?;
    let http_listeners = bind_listeners(config.http_listen, cores)?;
    let bound = bound_address(&listeners, config.binary_listen);
    let http_bound = bound_address(&http_listeners, config.http_listen);
    let io_memory = runtime::io_memory_per_executor(cores);
    tracing::info!(
        cores,
        memlock_bytes = memlock,
        io_memory_bytes = io_memory,
        data_dir = %config.data_dir.display(),
        "starting"
    );
    if io_memory < runtime::IO_MEMORY_MAX {
        tracing::warn!(
            "the memlock limit ({memlock} bytes) leaves {io_memory} bytes of registered I/O memory \
             per core (wanted {}): I/O still works, but buffers are pinned per request. Raise it \
             with `ulimit -l unlimited` (or LimitMEMLOCK=infinity under systemd)",
            runtime::IO_MEMORY_MAX
        );
    }
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stopping.clone()).map_err(|e| ServeError::Core {
            core: 0,
            message: format!("installing the signal handler: {e}"),
        })?;
    }
    let mesh = MeshBuilder::<CoreMessage, _>::full(cores, config.net.core_channel_messages);
    let heartbeats = runtime::Heartbeats::new(cores);
    let loads: Arc<[AtomicUsize]> = (0..cores).map(|_| AtomicUsize::new(0)).collect();
    let ready = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for (id, (socket, http_socket)) in listeners.into_iter().zip(http_listeners).enumerate() {
        let config = config.clone();
        let mesh = mesh.clone();
        let shared = Shared {
            stopping: stopping.clone(),
            loads: loads.clone(),
            ready: ready.clone(),
            ended: ended.clone(),
        };
        let ended = ended.clone();
        let heartbeat = heartbeats.beat(id);
        let fd = socket.into_raw_fd();
        let http_fd = http_socket.into_raw_fd();
        let cpu = cpus.get(id % cpus.len().max(1)).copied();
        let builder = runtime::executor_builder(&format!("core-{id}"), cpu, cores);
        let handle = builder
            .spawn(move || async move {
                // SAFETY: `fd` is a bound, listening socket whose ownership we took with
                // into_raw_fd above; nothing else closes it.
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                // SAFETY: as above, for the HTTP socket.
                let http_listener = unsafe { TcpListener::from_raw_fd(http_fd) };
                let listeners = (listener, http_listener);
                // See runtime::WAKE_TICK; the tick also feeds the stall watchdog.
                let tick = runtime::spawn_wake_tick(Some(heartbeat));
                let result =
                    run_core(id, cores, config, mesh, listeners, shared, iterator_key).await;
                tick.set(true);
                ended.fetch_add(1, Ordering::AcqRel);
                result
            })
            .map_err(|e| runtime::RuntimeError::Uring {
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    heartbeats.watch(stopping.clone());
    // Every core has opened its shards and accepts clients (or one failed to start, and
    // the join below reports why).
    while ready.load(Ordering::Acquire) < cores && ended.load(Ordering::Acquire) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    if ended.load(Ordering::Acquire) == 0 {
        // One line on stdout that scripts and tests can wait for: from here on every
        // shard is open and every core serves.
        println!(
            "spate: serving the binary protocol on {bound} and the Kinesis API on http://{http_bound} with {cores} cores"
        );
    }
    let mut failure = None;
    for (core, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => failure = failure.or(Some(ServeError::Core { core, message })),
            Err(_) => {
                failure = failure.or(Some(ServeError::Core {
                    core,
                    message: "panicked".into(),
                }));
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// What every core shares with the others: the stop flag the signal handler sets, and
/// each core's count of open connections (see [`Core::place_connection`]).
struct Shared {
    stopping: Arc<AtomicBool>,
    loads: Arc<[AtomicUsize]>,
    /// Cores that have opened their shards; no core serves clients before all have, so
    /// a request never reaches an owner still opening its shards.
    ready: Arc<AtomicUsize>,
    /// Cores whose run ended (an error at start-up, before they were ready, included).
    ended: Arc<AtomicUsize>,
}

async fn run_core(
    id: usize,
    cores: usize,
    config: Config,
    mesh: MeshBuilder<CoreMessage, glommio::channels::channel_mesh::Full>,
    (listener, http_listener): (TcpListener, TcpListener),
    shared: Shared,
    iterator_key: [u8; 32],
) -> Result<(), String> {
    let Shared {
        stopping,
        loads,
        ready,
        ended,
    } = shared;
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "joining the core mesh".to_string())?;
    tracing::debug!(core = id, "joined the core mesh");
    let controller = if id == 0 {
        let catalog = Catalog::load(&config.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        let mut catalog = catalog;
        if controller::settle_transitions(&mut catalog) {
            catalog
                .persist(&config.data_dir)
                .await
                .map_err(|e| e.to_string())?;
        }
        controller::remove_orphans(&catalog, &config.data_dir);
        let leases = leases::Leases::load(&config.data_dir).await?;
        Some(Controller::new(catalog, leases))
    } else {
        None
    };
    let core = Core::new(id, cores, config, senders, controller, iterator_key, loads);
    core.listen_to_peers(receivers);
    if let Some(controller) = &core.controller {
        controller.publish(&core, Vec::new()).await?;
        tracing::info!("catalog loaded; every shard is open");
        controller.resume(&core);
        let scaler = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                if let Some(controller) = &scaler.controller {
                    controller.split_hot_shards(&scaler).await;
                }
            }
        })
        .detach();
        let expiry_core = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETENTION_INTERVAL).await;
                let request = CoreRequest::Control(ControlRequest::ExpireClosed);
                if let CoreReply::Control(Err(error)) = expiry_core.call(0, request).await {
                    tracing::warn!(%error, "expiring closed shards failed");
                }
            }
        })
        .detach();
    }
    core.wait_ready().await;
    ready.fetch_add(1, Ordering::AcqRel);
    while ready.load(Ordering::Acquire) < cores {
        if ended.load(Ordering::Acquire) > 0 || stopping.load(Ordering::Relaxed) {
            // Another core failed to start (the server reports its error) or we were
            // told to stop before serving anyone.
            core.shut_down().await;
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let local_stop = core.stopping.clone();
    let watcher_stop = local_stop.clone();
    let watcher = glommio::spawn_local(async move {
        while !stopping.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        watcher_stop.set(true);
    })
    .detach();
    let retention_core = core.clone();
    let retention_stop = local_stop.clone();
    glommio::spawn_local(async move {
        while !retention_stop.get() {
            glommio::timer::sleep(RETENTION_INTERVAL).await;
            retention_core
                .enforce_retention(crate::tools::now_us())
                .await;
        }
    })
    .detach();
    let http = glommio::spawn_local(net::accept_loop(core.clone(), http_listener, Port::Http));
    net::accept_loop(core.clone(), listener, Port::Binary).await;
    http.await;
    let _ = watcher.await;
    tracing::info!(
        core = id,
        shards = core.shard_count(),
        "stopping: committing what is pending"
    );
    core.shut_down().await;
    Ok(())
}

/// One listening socket per core on the same address (the first binds the requested
/// address, which may have port 0; the rest bind the port it got).
fn bind_listeners(addr: SocketAddr, cores: usize) -> Result<Vec<Socket>, ServeError> {
    let mut sockets = Vec::with_capacity(cores);
    // The per-core sockets share their port through SO_REUSEPORT, which would as gladly
    // share it with another process of the same user already listening there (another
    // spate, a parallel test's server): the kernel would then balance connections across
    // both. A plain bind first fails on a port someone listens on, and picks a free one
    // for port 0.
    let probe = exclusive_probe(addr).map_err(|e| ServeError::Listen {
        addr,
        message: e.to_string(),
    })?;
    let mut target = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    drop(probe);
    for _ in 0..cores {
        let socket = listen_socket(target).map_err(|e| ServeError::Listen {
            addr: target,
            message: e.to_string(),
        })?;
        if let Some(bound) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
            target = bound;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bound_address(sockets: &[Socket], asked: SocketAddr) -> SocketAddr {
    sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_socket())
        .unwrap_or(asked)
}

/// A socket bound to `addr` without SO_REUSEPORT (SO_REUSEADDR only, so connections of an
/// earlier run in TIME_WAIT do not block it): fails while anything listens there.
fn exclusive_probe(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listen_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Takes an exclusive lock on the data folder for the life of the server, so a second
/// server on the same folder fails at start instead of corrupting the first one's logs.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServeError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let failed = |message: String| ServeError::DataDir {
        path: dir.display().to_string(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed(e.to_string()))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(failed(
            "another spate server is using it (LOCK is held)".into(),
        ));
    }
    Ok(file)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises the open-files limit to its hard maximum: every shard holds its active segment
/// open, and every connection a socket.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
