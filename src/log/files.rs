//! Small file operations the log (and the catalog) build on, all through glommio's
//! io_uring files: read a whole file, write a file atomically, sync a directory. Owns the
//! typed I/O error that names the operation and the file. Runs on whichever core calls it.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaFile, OpenOptions};
use thiserror::Error;

/// An I/O failure, naming what we were doing and to which file. Cloneable so one failed
/// commit can be reported to every append that waited on it.
#[derive(Clone, Debug, Error)]
#[error("{op} {path}: {message}")]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    pub message: Rc<str>,
}

impl IoError {
    pub fn new(op: &'static str, path: &Path, error: impl std::fmt::Display) -> IoError {
        IoError {
            op,
            path: path.to_path_buf(),
            message: error.to_string().into(),
        }
    }
}

/// Helper to turn any displayable error into an [`IoError`] for `op` on `path`.
pub fn io_err<E: std::fmt::Display>(op: &'static str, path: &Path) -> impl FnOnce(E) -> IoError {
    move |e| IoError::new(op, path, e)
}

/// Block size used for O_DIRECT alignment of writes.
pub const BLOCK_BYTES: u64 = 4096;

pub fn align_down(value: u64) -> u64 {
    value & !(BLOCK_BYTES - 1)
}

pub fn align_up(value: u64) -> u64 {
    align_down(value + BLOCK_BYTES - 1)
}

thread_local! {
    /// Devices whose io_uring polling support this executor thread has already probed.
    static PROBED_DEVICES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes glommio decide correctly whether reads on `dir`'s device can use the polled ring.
///
/// glommio 0.9 probes polling support with a read at offset 0 of the first file this
/// thread opens on a device, and caches the answer per thread. When that file is empty the
/// read succeeds without reaching the device, glommio concludes "pollable", and every later
/// read on a device without poll queues (virtio, most cloud disks) fails with EOPNOTSUPP.
/// We open a one-block probe file with real data first, once per device per thread.
///
/// # Errors
/// [`IoError`] when the probe file cannot be written or opened.
pub async fn probe_device(dir: &Path) -> Result<(), IoError> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir).map_err(io_err("stat", dir))?.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(".spate-device-probe");
    std::fs::write(&probe, [0xa5u8; BLOCK_BYTES as usize]).map_err(io_err("write", &probe))?;
    let mut options = OpenOptions::new();
    options.read(true);
    let opened = open_retrying(&probe, &options)
        .await
        .map_err(io_err("open", &probe));
    let _ = std::fs::remove_file(&probe);
    // The probe only asks whether O_DIRECT works here; its close is not waited for, so a
    // stalled close cannot stall the open that asked.
    let probe_file = opened?;
    glommio::spawn_local(async move {
        let _ = probe_file.close().await;
    })
    .detach();
    PROBED_DEVICES.with(|p| p.borrow_mut().push(device));
    Ok(())
}

/// How long an open may take before it is issued again (see [`open_retrying`]).
const OPEN_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens a file through io_uring, issuing the open again when it has not completed within
/// [`OPEN_STALL`].
///
/// Under load, about one server start in a dozen saw an open on one core never complete:
/// the executor kept waking (its timers ran), the kernel's io_uring workers were idle, and
/// the future never resolved, so the core never finished opening its shards. That was
/// probably the executor parking with runnable tasks, fixed since in vendor/glommio (see
/// its SPATE_PATCH.md), but it was never proven; so an open that stalls is still abandoned
/// (a descriptor may leak if it completes later) and issued again, with a warning and a
/// report of the rings. No such warning appeared in the runs after the fix.
async fn open_retrying(path: &Path, options: &OpenOptions) -> std::io::Result<DmaFile> {
    let mut last = None;
    for attempt in 1..=5u32 {
        let open = async { Some(options.dma_open(path).await) };
        let stall = async {
            glommio::timer::sleep(OPEN_STALL).await;
            None
        };
        match futures_lite::future::or(open, stall).await {
            Some(Ok(file)) => return Ok(file),
            Some(Err(error)) => return Err(error.into()),
            None => {
                tracing::warn!(
                    path = %path.display(),
                    attempt,
                    rings = %crate::runtime::uring_report(),
                    "an io_uring open stalled; issuing it again"
                );
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("open did not complete in {OPEN_STALL:?}, {attempt} times"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("open failed")))
}

/// Opens an existing file for reading and writing with O_DIRECT.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn open_rw(path: &Path) -> Result<DmaFile, IoError> {
    probe_device(parent_of(path)).await?;
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    open_retrying(path, &options)
        .await
        .map_err(io_err("open", path))
}

/// Creates a new, empty file for reading and writing with O_DIRECT; fails if it exists.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn create_rw(path: &Path) -> Result<DmaFile, IoError> {
    probe_device(parent_of(path)).await?;
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    open_retrying(path, &options)
        .await
        .map_err(io_err("create", path))
}

/// Reads a whole file into memory.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn read_whole(path: &Path) -> Result<Vec<u8>, IoError> {
    probe_device(parent_of(path)).await?;
    let file = DmaFile::open(path).await.map_err(io_err("open", path))?;
    let result = read_whole_file(&file, path).await;
    let _ = file.close().await;
    result
}

/// Reads a whole open file into memory, in chunks.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn read_whole_file(file: &DmaFile, path: &Path) -> Result<Vec<u8>, IoError> {
    const CHUNK_BYTES: u64 = 4 * 1024 * 1024;
    let size = file.file_size().await.map_err(io_err("stat", path))?;
    let capacity = usize::try_from(size).map_err(io_err("size", path))?;
    let mut out = Vec::with_capacity(capacity);
    let mut position = 0u64;
    while position < size {
        let want = (size - position).min(CHUNK_BYTES) as usize;
        let chunk = file
            .read_at(position, want)
            .await
            .map_err(io_err("read", path))?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
        position += chunk.len() as u64;
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file is written and synced, renamed
/// over `path`, and the directory is synced, so a crash leaves the old or the new file.
///
/// # Errors
/// [`IoError`] naming the step and file that failed.
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = parent_of(path);
    probe_device(dir).await?;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let file = DmaFile::create(&temp)
        .await
        .map_err(io_err("create", &temp))?;
    if !bytes.is_empty() {
        let mut buffer = file.alloc_dma_buffer(align_up(bytes.len() as u64) as usize);
        let target = buffer.as_bytes_mut();
        target[..bytes.len()].copy_from_slice(bytes);
        target[bytes.len()..].fill(0);
        file.write_at(buffer, 0)
            .await
            .map_err(io_err("write", &temp))?;
    }
    truncate(&file, &temp, bytes.len() as u64)?;
    file.fdatasync().await.map_err(io_err("fdatasync", &temp))?;
    file.close().await.map_err(io_err("close", &temp))?;
    std::fs::rename(&temp, path).map_err(io_err("rename", path))?;
    sync_dir(dir).await
}

/// Sets a file's length with ftruncate(2), on the calling thread.
///
/// glommio's own `DmaFile::truncate` hands the call to its blocking thread pool, and its
/// completion sometimes never reaches the executor: a restart after SIGKILL hung for
/// ever cutting a torn tail (seen under load, about one start in a dozen, both cores
/// parked and the pool idle). ftruncate is a short metadata call, and spate makes it only
/// when rolling or recovering a segment or replacing a small file, so making it here
/// costs the core microseconds.
///
/// # Errors
/// [`IoError`] naming the file.
pub fn truncate(file: &DmaFile, path: &Path, length: u64) -> Result<(), IoError> {
    use std::os::fd::AsRawFd;
    let length = libc::off_t::try_from(length).map_err(io_err("truncate", path))?;
    // SAFETY: ftruncate on a descriptor the DmaFile owns and keeps open for this call.
    let rc = unsafe { libc::ftruncate(file.as_raw_fd(), length) };
    if rc != 0 {
        return Err(IoError::new(
            "truncate",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
///
/// # Errors
/// [`IoError`] naming the directory.
pub async fn sync_dir(dir: &Path) -> Result<(), IoError> {
    let handle = Directory::open(dir)
        .await
        .map_err(io_err("open dir", dir))?;
    handle.sync().await.map_err(io_err("sync dir", dir))?;
    let _ = handle.close().await;
    Ok(())
}

/// Creates `dir` (and parents) if missing, syncing the parent so the entry is durable.
///
/// # Errors
/// [`IoError`] naming the directory.
pub async fn ensure_dir(dir: &Path) -> Result<(), IoError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).await?;
    }
    Ok(())
}
