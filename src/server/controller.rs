//! The controller: the one place the catalog changes. Lives on core 0; other cores send it
//! catalog changes over the mesh. A change is applied to a copy, persisted atomically, then
//! sent to every core as a snapshot, and answered once every core has adopted it (so a
//! stream is writable on every core when its create returns). Changes run one at a time.

use std::cell::RefCell;
use std::rc::Rc;

use futures::future::join_all;
use glommio::sync::Semaphore;

use crate::catalog::{Catalog, CatalogError, StreamMeta, StreamStatus};
use crate::protocol::binary::{Response, Status, WireError};
use crate::server::core::{Core, CoreReply, CoreRequest};

/// A catalog change.
pub enum ControlRequest {
    CreateStream {
        name: String,
        shard_count: u32,
        tags: Vec<(String, String)>,
    },
    DeleteStream {
        name: String,
    },
    SetRetention {
        name: String,
        hours: u32,
    },
    AddTags {
        name: String,
        tags: Vec<(String, String)>,
    },
    RemoveTags {
        name: String,
        keys: Vec<String>,
    },
    /// Ends a CREATING period: the stream becomes ACTIVE.
    FinishCreate {
        name: String,
    },
    /// Ends a DELETING period: the stream and its files go.
    FinishDelete {
        name: String,
    },
}

pub struct Controller {
    catalog: RefCell<Catalog>,
    /// Serialises changes across their awaits (persist, broadcast).
    turn: Semaphore,
}

impl Controller {
    pub fn new(catalog: Catalog) -> Controller {
        Controller {
            catalog: RefCell::new(catalog),
            turn: Semaphore::new(1),
        }
    }

    /// Sends the current catalog to every core; at start-up, this opens every shard.
    ///
    /// # Errors
    /// The first core's failure to adopt it (a shard that would not open).
    pub async fn publish(&self, core: &Rc<Core>, deleted: Vec<StreamMeta>) -> Result<(), String> {
        let catalog = self.catalog.borrow().clone();
        let calls = (0..core.cores).map(|target| {
            let request = CoreRequest::Snapshot {
                catalog: catalog.clone(),
                deleted: deleted.clone(),
            };
            core.call(target, request)
        });
        for reply in join_all(calls).await {
            match reply {
                CoreReply::Applied(Ok(())) => {}
                CoreReply::Applied(Err(message)) => return Err(message),
                _ => return Err("a core did not acknowledge the catalog".into()),
            }
        }
        Ok(())
    }

    /// Applies one change.
    ///
    /// # Errors
    /// [`WireError`] with the status a client can act on.
    pub async fn handle(
        &self,
        core: &Rc<Core>,
        request: ControlRequest,
    ) -> Result<Response, WireError> {
        // The semaphore is never closed, so acquiring cannot fail.
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|e| WireError::new(Status::Internal, e.to_string()))?;
        let mut next = self.catalog.borrow().clone();
        let data_dir = core.data_dir();
        let transition_ms = core.config.kinesis.stream_transition_ms;
        let deleted = match request {
            ControlRequest::CreateStream {
                name,
                shard_count,
                tags,
            } => {
                let retention = core.config.log.retention_hours;
                next.create_stream(&name, shard_count, core.cores, retention, now_us())
                    .map_err(catalog_error)?;
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                stream.tags.extend(tags);
                if transition_ms > 0 {
                    stream.status = StreamStatus::Creating;
                    later(core, transition_ms, ControlRequest::FinishCreate { name });
                }
                Vec::new()
            }
            ControlRequest::DeleteStream { name } if transition_ms > 0 => {
                next.stream_mut(&name).map_err(catalog_error)?.status = StreamStatus::Deleting;
                later(core, transition_ms, ControlRequest::FinishDelete { name });
                Vec::new()
            }
            ControlRequest::DeleteStream { name } | ControlRequest::FinishDelete { name } => {
                vec![next.delete_stream(&name).map_err(catalog_error)?]
            }
            ControlRequest::FinishCreate { name } => {
                next.stream_mut(&name).map_err(catalog_error)?.status = StreamStatus::Active;
                Vec::new()
            }
            ControlRequest::SetRetention { name, hours } => {
                next.stream_mut(&name)
                    .map_err(catalog_error)?
                    .retention_hours = hours;
                Vec::new()
            }
            ControlRequest::AddTags { name, tags } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                stream.tags.extend(tags);
                if stream.tags.len() > crate::limits::STREAM_TAGS_MAX {
                    return Err(WireError::new(
                        Status::LimitExceeded,
                        format!(
                            "a stream cannot have more than {} tags",
                            crate::limits::STREAM_TAGS_MAX
                        ),
                    ));
                }
                Vec::new()
            }
            ControlRequest::RemoveTags { name, keys } => {
                let stream = next.stream_mut(&name).map_err(catalog_error)?;
                for key in keys {
                    stream.tags.remove(&key);
                }
                Vec::new()
            }
        };
        next.persist(&data_dir).await.map_err(catalog_error)?;
        *self.catalog.borrow_mut() = next;
        self.publish(core, deleted.clone())
            .await
            .map_err(|m| WireError::new(Status::StorageFailed, m))?;
        for stream in deleted {
            let dir = stream.dir(&data_dir);
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %error, "could not remove a deleted stream's files");
            }
        }
        Ok(Response::Empty)
    }
}

/// Sends `request` to the controller after `delay_ms` (the end of a CREATING or DELETING
/// period).
fn later(core: &Rc<Core>, delay_ms: u64, request: ControlRequest) {
    let core = core.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(std::time::Duration::from_millis(delay_ms)).await;
        if let CoreReply::Control(Err(error)) = core.call(0, CoreRequest::Control(request)).await {
            tracing::warn!(%error, "ending a stream transition failed");
        }
    })
    .detach();
}

/// Settles transitions a restart interrupted: CREATING streams become ACTIVE, DELETING
/// ones are removed. Returns whether anything changed.
pub fn settle_transitions(catalog: &mut Catalog) -> bool {
    let deleting: Vec<String> = catalog
        .streams
        .values()
        .filter(|s| s.status == StreamStatus::Deleting)
        .map(|s| s.name.clone())
        .collect();
    let mut changed = !deleting.is_empty();
    for name in deleting {
        let _ = catalog.delete_stream(&name);
    }
    for stream in catalog.streams.values_mut() {
        if stream.status == StreamStatus::Creating {
            stream.status = StreamStatus::Active;
            changed = true;
        }
    }
    changed
}

/// Removes stream folders the catalog no longer knows (a delete interrupted by a crash).
pub fn remove_orphans(catalog: &Catalog, data_dir: &std::path::Path) {
    let streams = data_dir.join("streams");
    let Ok(entries) = std::fs::read_dir(&streams) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = catalog
            .streams
            .values()
            .any(|s| format!("{}.{}", s.name, s.id) == name);
        if !known {
            tracing::info!(folder = %entry.path().display(), "removing files of a deleted stream");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Maps catalog errors to the wire.
pub fn catalog_error(error: CatalogError) -> WireError {
    let status = match &error {
        CatalogError::StreamExists(_) => Status::StreamExists,
        CatalogError::StreamNotFound(_) => Status::StreamNotFound,
        CatalogError::InvalidName(_) | CatalogError::InvalidShardCount { .. } => {
            Status::InvalidArgument
        }
        CatalogError::ShardLimit { .. } => Status::LimitExceeded,
        CatalogError::Io(_) | CatalogError::Damaged { .. } => Status::StorageFailed,
    };
    WireError::new(status, error.to_string())
}

fn now_us() -> u64 {
    crate::tools::now_us()
}
