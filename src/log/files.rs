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
    let opened = DmaFile::open(&probe).await.map_err(io_err("open", &probe));
    let _ = std::fs::remove_file(&probe);
    let _ = opened?.close().await;
    PROBED_DEVICES.with(|p| p.borrow_mut().push(device));
    Ok(())
}

/// Opens an existing file for reading and writing with O_DIRECT.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn open_rw(path: &Path) -> Result<DmaFile, IoError> {
    probe_device(parent_of(path)).await?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(io_err("open", path))
}

/// Creates a new, empty file for reading and writing with O_DIRECT; fails if it exists.
///
/// # Errors
/// [`IoError`] naming the file.
pub async fn create_rw(path: &Path) -> Result<DmaFile, IoError> {
    probe_device(parent_of(path)).await?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(path)
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
    file.truncate(bytes.len() as u64)
        .await
        .map_err(io_err("truncate", &temp))?;
    file.fdatasync().await.map_err(io_err("fdatasync", &temp))?;
    file.close().await.map_err(io_err("close", &temp))?;
    std::fs::rename(&temp, path).map_err(io_err("rename", path))?;
    sync_dir(dir).await
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
