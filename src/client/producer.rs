//! A batching producer: records sent one at a time are gathered into puts of up to
//! `batch_records` (or sent when `linger` has passed since the first record of a batch),
//! with up to `in_flight` puts outstanding per connection. Each record's future resolves
//! to its own result (shard and sequence number, or the error). Runs on the client's
//! thread.
//!
//! [`Producer::new`] sends everything over one [`Client`], and the server hands each
//! record to the core that owns its shard. [`Producer::connect_by_owner`] does what a Kafka
//! producer does with partition leaders: it reads the stream's shard map, opens one
//! connection per owner core (each attached to its core) and batches each record on the
//! connection of its shard's owner, which spares the server every cross-core hand-over.
//! The map is read once; after a reshard or a move, records whose shard changed core are
//! still stored (the server routes them), only with the hand-over again until
//! [`Producer::refresh`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::Semaphore;

use crate::client::{Client, ClientError, OwnerMap, connect_per_core};
use crate::limits::BATCH_RECORDS_MAX;
use crate::protocol::binary::{PutEntry, PutResult, Request, Response};

/// Gathers records into batched puts.
pub struct Producer {
    inner: Rc<Inner>,
}

struct Inner {
    stream: Rc<str>,
    batch_records: usize,
    linger: Duration,
    /// One per connection: a single one, or one per server core (`None` for a core this
    /// producer has no connection to).
    lanes: Vec<Option<Rc<Lane>>>,
    /// Where a record goes when its core has no lane: the first lane.
    fallback: Rc<Lane>,
    /// Which lane a hash key goes to; `None` when there is only one lane.
    owners: RefCell<Option<OwnerMap>>,
    /// For [`Producer::refresh`]: the server, when connected by owner.
    addr: Option<SocketAddr>,
}

/// One connection's batching: the open batch, and the closed ones queued for the lane's
/// sender task, which sends them in the order they closed.
struct Lane {
    closed: LocalSender<Closed>,
    open: RefCell<Open>,
}

/// A closed batch: its records and each one's waiter.
type Closed = (
    Vec<PutEntry>,
    Vec<oneshot::Sender<Result<PutResult, ClientError>>>,
);

#[derive(Default)]
struct Open {
    records: Vec<PutEntry>,
    waiters: Vec<oneshot::Sender<Result<PutResult, ClientError>>>,
    /// Bumped on every flush, so a linger timer knows whether its batch already went.
    generation: u64,
}

impl Producer {
    /// A producer for `stream` over `client`; `batch_records` is clamped to 1..=500.
    pub fn new(
        client: Rc<Client>,
        stream: &str,
        batch_records: usize,
        linger: Duration,
        in_flight: usize,
    ) -> Producer {
        let lane = Rc::new(Lane::new(client, stream, in_flight));
        Producer {
            inner: Rc::new(Inner {
                stream: stream.into(),
                batch_records: batch_records.clamp(1, BATCH_RECORDS_MAX),
                linger,
                lanes: vec![Some(lane.clone())],
                fallback: lane,
                owners: RefCell::new(None),
                addr: None,
            }),
        }
    }

    /// A producer for `stream` at `addr` that sends each record to the core owning its
    /// shard: a connection per owner core, each batching its own records (see the module
    /// documentation). Records of one partition key keep their order.
    ///
    /// # Errors
    /// The stream's description failing (unknown stream), or a connection failing.
    pub async fn connect_by_owner(
        addr: SocketAddr,
        stream: &str,
        batch_records: usize,
        linger: Duration,
        in_flight: usize,
    ) -> Result<Producer, ClientError> {
        let description = Client::connect(addr).await?.describe_stream(stream).await?;
        let owners = OwnerMap::new(&description);
        let mut lanes: Vec<Option<Rc<Lane>>> = connect_per_core(addr, owners.cores())
            .await?
            .into_iter()
            .map(|client| client.map(|client| Rc::new(Lane::new(client, stream, in_flight))))
            .collect();
        let fallback = match lanes.iter().flatten().next() {
            Some(lane) => lane.clone(),
            // No open shard to own anything (the stream is being deleted): one connection
            // wherever the server puts it, which will answer with the reason.
            None => {
                let client = Client::connect(addr).await?;
                let lane = Rc::new(Lane::new(Rc::new(client), stream, in_flight));
                lanes = vec![Some(lane.clone())];
                lane
            }
        };
        Ok(Producer {
            inner: Rc::new(Inner {
                stream: stream.into(),
                batch_records: batch_records.clamp(1, BATCH_RECORDS_MAX),
                linger,
                lanes,
                fallback,
                owners: RefCell::new(Some(owners)),
                addr: Some(addr),
            }),
        })
    }

    /// Reads the stream's shard map again (after a reshard or a shard's move), for a
    /// producer made with [`Producer::connect_by_owner`]; records for a core it has no
    /// connection to go to another connection and are handed over by the server. Does
    /// nothing for a producer over one client.
    ///
    /// # Errors
    /// The stream's description failing.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let Some(addr) = self.inner.addr else {
            return Ok(());
        };
        let client = Client::connect(addr).await?;
        let description = client.describe_stream(&self.inner.stream).await?;
        *self.inner.owners.borrow_mut() = Some(OwnerMap::new(&description));
        Ok(())
    }

    /// Queues a record; the returned future resolves once its put is answered. Records of
    /// one connection are sent in the order they were queued, so those of one partition
    /// key keep theirs.
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
        let lane = inner.lane_for(&partition_key);
        let (full, first, generation) = {
            let mut open = lane.open.borrow_mut();
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
            lane.flush();
        } else if first {
            let (lingering, linger) = (lane.clone(), inner.linger);
            glommio::spawn_local(async move {
                glommio::timer::sleep(linger).await;
                if lingering.open.borrow().generation == generation {
                    lingering.flush();
                }
            })
            .detach();
        }
        async move { rx.await.map_err(|_| ClientError::Closed)? }
    }

    /// Sends every open batch now.
    pub fn flush(&self) {
        for lane in self.inner.lanes.iter().flatten() {
            lane.flush();
        }
    }
}

impl Inner {
    /// The lane for a record with this partition key: its shard's owner core's, or the
    /// first lane when there is one lane or no connection to that core.
    fn lane_for(&self, partition_key: &[u8]) -> Rc<Lane> {
        let core = self.owners.borrow().as_ref().map_or(0, |owners| {
            owners.core_of(crate::catalog::hash_key(partition_key))
        });
        match self.lanes.get(core) {
            Some(Some(lane)) => lane.clone(),
            _ => self.fallback.clone(),
        }
    }
}

impl Lane {
    fn new(client: Rc<Client>, stream: &str, in_flight: usize) -> Lane {
        let (closed, batches) = local_channel::new_unbounded();
        glommio::spawn_local(send_in_order(client, stream.into(), in_flight, batches)).detach();
        Lane {
            closed,
            open: RefCell::new(Open::default()),
        }
    }

    fn flush(&self) {
        let batch = {
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
        // Fails only once the sender task is gone, which drops the waiters: their records
        // then resolve to `ClientError::Closed`.
        let _ = self.closed.try_send(batch);
    }
}

/// Sends a lane's batches in the order they closed, with up to `in_flight` unanswered.
/// Only this task takes the in-flight slots and sends, so no batch overtakes another (a
/// task per batch, each waiting for a slot, went out of order when slots freed together).
async fn send_in_order(
    client: Rc<Client>,
    stream: Rc<str>,
    in_flight: usize,
    batches: LocalReceiver<Closed>,
) {
    let slots = Rc::new(Semaphore::new(in_flight.max(1) as u64));
    while let Some((records, waiters)) = batches.recv().await {
        let Ok(slot) = slots.clone().acquire_static_permit(1).await else {
            return;
        };
        let request = Request::PutRecords {
            stream: stream.to_string(),
            records,
        };
        let answer = client.start(&request).await;
        glommio::spawn_local(async move {
            let answered = match answer {
                Ok(answer) => answer.await,
                Err(error) => Err(error),
            };
            match answered {
                Ok(Response::Put(results)) => {
                    for (waiter, result) in waiters.into_iter().zip(results) {
                        let _ = waiter.send(Ok(result));
                    }
                }
                Ok(other) => {
                    let error = ClientError::Protocol(format!("unexpected response {other:?}"));
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
            drop(slot);
        })
        .detach();
    }
}
