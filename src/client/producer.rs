//! A batching producer over one [`Client`]: records sent one at a time are gathered into
//! puts of up to `batch_records` (or sent when `linger` has passed since the first record
//! of a batch), with up to `in_flight` puts outstanding. Each record's future resolves to
//! its own result (shard and sequence number, or the error). Runs on the client's thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::sync::Semaphore;

use crate::client::{Client, ClientError};
use crate::limits::BATCH_RECORDS_MAX;
use crate::protocol::binary::{PutEntry, PutResult};

/// Gathers records into batched puts.
pub struct Producer {
    inner: Rc<Inner>,
}

struct Inner {
    client: Rc<Client>,
    stream: String,
    batch_records: usize,
    linger: Duration,
    slots: Rc<Semaphore>,
    open: RefCell<Open>,
}

#[derive(Default)]
struct Open {
    records: Vec<PutEntry>,
    waiters: Vec<oneshot::Sender<Result<PutResult, ClientError>>>,
    /// Bumped on every flush, so a linger timer knows whether its batch already went.
    generation: u64,
}

impl Producer {
    /// A producer for `stream`; `batch_records` is clamped to 1..=500.
    pub fn new(
        client: Rc<Client>,
        stream: &str,
        batch_records: usize,
        linger: Duration,
        in_flight: usize,
    ) -> Producer {
        Producer {
            inner: Rc::new(Inner {
                client,
                stream: stream.to_string(),
                batch_records: batch_records.clamp(1, BATCH_RECORDS_MAX),
                linger,
                slots: Rc::new(Semaphore::new(in_flight.max(1) as u64)),
                open: RefCell::new(Open::default()),
            }),
        }
    }

    /// Queues a record; the returned future resolves once its put is answered. Records of
    /// one producer are sent in the order they were queued.
    ///
    /// # Errors
    /// The future yields the put's error for every record of a failed request.
    pub fn send(
        &self,
        partition_key: Bytes,
        data: Bytes,
    ) -> impl std::future::Future<Output = Result<PutResult, ClientError>> + use<> {
        let (tx, rx) = oneshot::channel();
        let inner = &self.inner;
        let (full, first, generation) = {
            let mut open = inner.open.borrow_mut();
            open.records.push(PutEntry {
                partition_key,
                data,
                explicit_hash_key: None,
            });
            open.waiters.push(tx);
            let len = open.records.len();
            (len >= inner.batch_records, len == 1, open.generation)
        };
        if full {
            inner.flush();
        } else if first {
            let lingering = inner.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(lingering.linger).await;
                if lingering.open.borrow().generation == generation {
                    lingering.flush();
                }
            })
            .detach();
        }
        async move { rx.await.map_err(|_| ClientError::Closed)? }
    }

    /// Sends the open batch now, if it holds anything.
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Inner {
    fn flush(&self) {
        let (records, waiters) = {
            let mut open = self.open.borrow_mut();
            if open.records.is_empty() {
                return;
            }
            open.generation += 1;
            (
                std::mem::take(&mut open.records),
                std::mem::take(&mut open.waiters),
            )
        };
        let client = self.client.clone();
        let stream = self.stream.clone();
        let slots = self.slots.clone();
        glommio::spawn_local(async move {
            let Ok(_slot) = slots.acquire_permit(1).await else {
                return;
            };
            match client.put_records(&stream, records).await {
                Ok(results) => {
                    for (waiter, result) in waiters.into_iter().zip(results) {
                        let _ = waiter.send(Ok(result));
                    }
                }
                Err(error) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        })
        .detach();
    }
}
