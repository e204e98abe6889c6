//! Starting glommio executors within what the machine allows. Owns the sizing of each
//! executor's registered I/O memory against the process's memlock limit, and the error a
//! person sees when io_uring or locked memory is unavailable. Runs on the thread that
//! starts executors (main, or a test).

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

/// io_uring ring depth per executor. glommio's default is 128; deeper rings let one core
/// keep more segment writes and reads in flight.
pub const RING_DEPTH: usize = 256;

/// Most registered I/O memory we give one executor. Registered buffers only save a page
/// pin per I/O; everything works without them, so we never take more than we can lock.
pub const IO_MEMORY_MAX: usize = 8 * 1024 * 1024;

/// What glommio needs at the least (its own floor for the memlock limit).
pub const MEMLOCK_MIN: u64 = 512 * 1024;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(
        "the memlock limit is {limit} bytes, below the {MEMLOCK_MIN} glommio needs for io_uring. \
         Raise it: `ulimit -l unlimited` in the shell that starts spate, `LimitMEMLOCK=infinity` \
         in a systemd unit, or `--ulimit memlock=-1` for a container"
    )]
    Memlock { limit: u64 },
    #[error(
        "could not start an io_uring executor: {reason}. spate needs Linux 5.8+ with io_uring \
         allowed: check that /proc/sys/kernel/io_uring_disabled is 0 and, in a container, that \
         the seccomp profile permits io_uring_setup, io_uring_enter and io_uring_register"
    )]
    Uring { reason: String },
    #[error("executor {name} panicked")]
    Panicked { name: String },
}

/// Sets up the process's memory for steady latency. Call once at start-up, before any
/// thread starts.
///
/// - Transparent huge pages are turned off for this process (`PR_SET_THP_DISABLE`).
///   mimalloc asks for them (`MADV_HUGEPAGE`) on its segments, so the first touch of each
///   2 MiB region zeroes all of it inside whatever request touched it. On the test VM that
///   was a 4-6 ms stall, on the core's only thread, every few dozen requests: a perf profile
///   of a lightly loaded server had 31 % of its samples in `clear_page_erms` under
///   `do_huge_pmd_anonymous_page`, and its put p99 was 5.9 ms against 2.0 ms without.
///   Huge pages save TLB misses, which matter far less here than a stall on the ack path.
/// - glibc malloc (the allocator of the library's test binaries; the `spate` binary uses
///   mimalloc) keeps large buffers in its heap instead of a fresh mmap per allocation:
///   above 128 KiB it maps each allocation anew and unmaps it on free, and each batch paid
///   for page faults on first touch, about a fifth of the append path's cycles in a
///   profile of 1 KiB records.
pub fn tune_memory() {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process; mallopt only
    // sets glibc allocator parameters. Both are safe to call at any time.
    unsafe {
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "could not turn off transparent huge pages; expect rare multi-millisecond stalls on first touch of memory");
        }
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024 * 1024);
    }
}

/// The soft memlock limit of this process, in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return 0;
    }
    limit.rlim_cur
}

/// Raises the soft memlock limit to the hard one, when that is higher. Returns the limit
/// now in force.
pub fn raise_memlock() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
    memlock_limit()
}

/// Registered I/O memory for each of `executors` executors that share the memlock limit,
/// leaving a quarter of it for the rings themselves.
pub fn io_memory_per_executor(executors: usize) -> usize {
    let limit = memlock_limit();
    let share = (limit / 4 * 3) / executors.max(1) as u64;
    usize::try_from(share)
        .unwrap_or(IO_MEMORY_MAX)
        .min(IO_MEMORY_MAX)
}

/// Checks that the memlock limit lets glommio start at all.
///
/// # Errors
/// [`RuntimeError::Memlock`] with the limit found and how to raise it.
pub fn check_memlock() -> Result<(), RuntimeError> {
    let limit = memlock_limit();
    if limit < MEMLOCK_MIN {
        return Err(RuntimeError::Memlock { limit });
    }
    Ok(())
}

/// A builder for one executor, sized to share the memlock limit with `executors` others.
///
/// The executor's thread for blocking system calls (syncfs for every commit round that
/// wrote several files, truncates, renames) may run on any CPU: glommio would pin it to
/// the executor's, where a commit round's syncfs, with the file system's writeback it
/// does in the calling thread, preempted the very core serving requests. Measured on a
/// 2 vCPU VM (alternated runs, 1.8 M records/s on a one-core server with the load on
/// the other core): load p50 1.06-1.19 ms against 1.28-1.65, p90 1.30-1.58 against
/// 1.65-2.05, p99 3.0-4.3 against 3.1-5.9; the 2-core server's max rate 3.80-3.81 M
/// records/s against 3.55-3.59. The syncfs then costs the other core's time instead.
pub fn executor_builder(name: &str, cpu: Option<usize>, executors: usize) -> LocalExecutorBuilder {
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory_per_executor(executors))
        .ring_depth(RING_DEPTH)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
}

/// Longest any of our executors sleeps before looking for work again.
///
/// Until glommio was patched (vendor/glommio/SPATE_PATCH.md) its executors could park with
/// runnable tasks and sleep until something unrelated woke them: a core asleep for minutes
/// with a catalog message waiting, a client asleep with its response already sent, a 15 ms
/// p99 at low load. A 1 ms tick bounded those stalls, at 1,000 wake-ups a second per core
/// and about 12 % of a CPU for an idle 2-core server. With the fix, an A/B of 1 ms against
/// 100 ms (open loop, 5,000 records/s, 8 rounds each) showed the same p50 and p99, so the
/// tick is now only a safety net for any wake-up still lost, and the heartbeat the stall
/// watchdog reads; an idle server costs about 1 % of a CPU.
pub const WAKE_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts the wake-up tick on the current executor; it stops when the returned flag is set.
/// Each tick also stamps `heartbeat`, when given, with [`Heartbeats::now_ms`], for the
/// stall watchdog.
pub fn spawn_wake_tick(
    heartbeat: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> std::rc::Rc<std::cell::Cell<bool>> {
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = stop.clone();
    glommio::spawn_local(async move {
        while !flag.get() {
            if let Some(beat) = &heartbeat {
                beat.store(Heartbeats::now_ms(), std::sync::atomic::Ordering::Relaxed);
            }
            glommio::timer::sleep(WAKE_TICK).await;
        }
    })
    .detach();
    stop
}

/// How long a core's tick may miss before the watchdog reports the core as stalled.
pub const STALL_REPORT: std::time::Duration = std::time::Duration::from_secs(2);

/// One heartbeat per executor, stamped by its wake tick; a plain thread watches them and
/// logs, once per stall, any executor whose tick has not run for [`STALL_REPORT`], with
/// [`uring_report`]: an executor that stops running its tick serves nothing.
pub struct Heartbeats {
    beats: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Heartbeats {
    pub fn new(executors: usize) -> Heartbeats {
        let beats = (0..executors)
            .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(Heartbeats::now_ms())))
            .collect();
        Heartbeats { beats }
    }

    /// Milliseconds on a monotonic clock shared by all threads of the process.
    pub fn now_ms() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The heartbeat executor `index` stamps.
    pub fn beat(&self, index: usize) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.beats[index].clone()
    }

    /// Watches the heartbeats on a thread of its own until `stopping` is set.
    pub fn watch(self, stopping: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::Ordering;
        let spawned = std::thread::Builder::new()
            .name("stall-watchdog".into())
            .spawn(move || {
                let mut reported = vec![false; self.beats.len()];
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(STALL_REPORT / 4);
                    let now = Heartbeats::now_ms();
                    for (core, beat) in self.beats.iter().enumerate() {
                        let silent_ms = now.saturating_sub(beat.load(Ordering::Relaxed));
                        let stalled = silent_ms >= STALL_REPORT.as_millis() as u64;
                        if stalled && !reported[core] {
                            tracing::warn!(
                                core,
                                silent_ms,
                                rings = %uring_report(),
                                "a core has not run its wake tick for seconds: it is stalled"
                            );
                        } else if !stalled && reported[core] {
                            tracing::warn!(core, "the stalled core runs again");
                        }
                        reported[core] = stalled;
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the stall watchdog");
        }
    }
}

/// Runs `make()` to completion on a new unpinned executor thread and returns its output.
/// Used by tools and tests that need one core's worth of io_uring.
///
/// # Errors
/// [`RuntimeError`] when the executor cannot start or its task panics.
pub fn run_on_executor<F, Fut, T>(name: &str, make: F) -> Result<T, RuntimeError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    check_memlock()?;
    let handle = executor_builder(name, None, 2)
        .spawn(move || async move {
            let tick = spawn_wake_tick(None);
            let out = make().await;
            tick.set(true);
            out
        })
        .map_err(|e| RuntimeError::Uring {
            reason: e.to_string(),
        })?;
    handle.join().map_err(|_| RuntimeError::Panicked {
        name: name.to_string(),
    })
}

/// A one-line account of every io_uring of this process and of every thread's kernel wait,
/// from /proc, for the warnings a stalled operation logs: each ring's submission and
/// completion heads and tails, the entries still waiting on either side, its armed polls
/// and its overflowed completions, then `thread:wait-channel [kernel stack]` for each
/// thread (the stack only where /proc lets us read it). Blocking reads of /proc; only for
/// rare diagnostics.
pub fn uring_report() -> String {
    let mut report = String::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return "no /proc/self/fd".into();
    };
    for fd in fds.flatten() {
        let is_ring = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().contains("io_uring"));
        if !is_ring {
            continue;
        }
        let name = fd.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else {
            continue;
        };
        report.push_str(&format!("ring fd {name}:"));
        let mut overflow = None;
        for line in info.lines() {
            let key = line.split(':').next().unwrap_or("");
            match key {
                "SqHead" | "SqTail" | "CachedSqHead" | "CqHead" | "CqTail" | "CachedCqTail"
                | "SQEs" | "CQEs" => {
                    let value = line[key.len() + 1..].trim();
                    report.push_str(&format!(" {key}={value}"));
                }
                "CqOverflowList" => overflow = Some(0usize),
                _ if overflow.is_some() && line.starts_with("  ") => {
                    overflow = overflow.map(|n| n + 1);
                }
                // Armed polls (and reads waiting on one), as "op=N, task_works=M".
                _ if overflow.is_none() && line.starts_with("  op=") => {
                    report.push_str(&format!(" poll[{}]", line.trim()));
                }
                _ => {}
            }
        }
        report.push_str(&format!(" overflowed={}; ", overflow.unwrap_or(0)));
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let read = |file: &str| {
                std::fs::read_to_string(task.path().join(file))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let stack: Vec<String> = read("stack")
                .lines()
                .take(8)
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .collect();
            report.push_str(&format!(
                "{}:{} [{}] ",
                read("comm"),
                read("wchan"),
                stack.join("<")
            ));
        }
    }
    report
}
