//! etcd `Watch`: one bidirectional stream per call, many watches per stream,
//! served from this node's applied state through the [`WatchHub`].
//!
//! A session task reads the client's requests (create, cancel, progress) and owns
//! the stream's watch ids; everything the client is sent goes through one bounded
//! queue of [`Outbound`] messages, in order, and is turned into etcd's
//! `WatchResponse`s on the way out (`prev_kv` dropped unless asked for, large
//! responses split when the watch asked for fragments).
//!
//! Requests answered as etcd answers them: an empty key watches `"\0"`; a range
//! that ends at or before its key, or a client-chosen id already in use, is created
//! and canceled at once with etcd's reason; a cancel of an unknown id is ignored;
//! a progress request is answered with watch id -1.
//!
//! Require-leader (the `hasleader` metadata etcd's clients send): refused at once
//! on a node without a leader, and ended with "etcdserver: no leader" once its node
//! has had none for three election timeouts, so the client reconnects elsewhere
//! instead of watching a node that has stopped learning of changes.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{stream, Stream, StreamExt};
use roster_proto::etcdserverpb::watch_create_request::FilterType;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::watch_server::Watch;
use roster_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use roster_proto::mvccpb;
use roster_state::auth::Caller;
use roster_state::{Event, EventKind};
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::to_proto_kv;
use super::{EtcdApi, MAX_REQUEST_BYTES};
use crate::watch::{Outbound, Selector, StreamGuard, WatchOptions};

/// Messages queued per stream before a watcher is moved to catching up.
const STREAM_QUEUE: usize = 128;

type WatchResponses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

#[tonic::async_trait]
impl Watch for EtcdApi {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchResponses>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if require_leader && !self.has_leader() {
            return Err(no_leader());
        }
        // The caller is resolved once, when the stream opens: a token that
        // expires later does not make the stream's next create fail (etcd's
        // #12385); its rights are checked at each create.
        let caller = self.caller(&request)?;
        if caller.is_none() {
            // etcd ends a token-less stream while auth is on.
            let status = self.read(|sm| sm.auth_status().map_err(super::errors::engine_status))?;
            if status.enabled {
                return Err(super::state_status(&roster_state::StateError::NoToken));
            }
        }
        let (out, queue) = mpsc::channel(STREAM_QUEUE);
        let session = Session {
            api: self.clone(),
            caller,
            stream: self.watch.hub.open_stream(),
            out,
            ids: HashSet::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(request.into_inner(), require_leader));
        let api = self.clone();
        let responses = ReceiverStream::new(queue)
            .flat_map(move |message| stream::iter(api.watch_responses(message)));
        Ok(Response::new(Box::pin(responses)))
    }
}

impl EtcdApi {
    fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// etcd's responses for one queued message.
    fn watch_responses(&self, message: Outbound) -> Vec<Result<WatchResponse, Status>> {
        let response = |watch_id, revision| WatchResponse {
            header: self.header(revision),
            watch_id,
            ..Default::default()
        };
        let published = || self.watch.hub.published();
        let single = match message {
            Outbound::Created { watch_id, revision } => WatchResponse {
                created: true,
                ..response(watch_id, revision)
            },
            Outbound::Rejected { watch_id, reason } => WatchResponse {
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..response(watch_id, published())
            },
            Outbound::Events {
                watch_id,
                revision,
                events,
                options,
            } => {
                let template = response(watch_id, revision);
                roster_metrics::WATCH_EVENTS_SENT.add(events.len() as u64);
                return fragments(template, events, options)
                    .into_iter()
                    .map(Ok)
                    .collect();
            }
            Outbound::Progress { watch_id, revision } => response(watch_id, revision),
            Outbound::Canceled { watch_id, revision } => WatchResponse {
                canceled: true,
                ..response(watch_id, revision)
            },
            Outbound::Compacted {
                watch_id,
                compacted,
            } => WatchResponse {
                canceled: true,
                compact_revision: compacted,
                ..response(watch_id, published())
            },
            Outbound::Failed { watch_id, reason } => WatchResponse {
                canceled: true,
                cancel_reason: reason,
                ..response(watch_id, published())
            },
            Outbound::NoLeader => return vec![Err(no_leader())],
        };
        vec![Ok(single)]
    }
}

/// One response with all `events`, or (if the watch asked for fragments and they
/// exceed etcd's request size limit) several, all but the last marked `fragment`.
fn fragments(
    template: WatchResponse,
    events: Vec<Arc<Event>>,
    options: WatchOptions,
) -> Vec<WatchResponse> {
    let events: Vec<mvccpb::Event> = events
        .iter()
        .map(|e| to_proto_event(e, options.prev_kv))
        .collect();
    if !options.fragment {
        return vec![WatchResponse { events, ..template }];
    }
    let mut chunks: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
    let mut size = 0;
    for event in events {
        let len = prost::Message::encoded_len(&event);
        let current = chunks
            .last_mut()
            .filter(|c| c.is_empty() || size + len <= MAX_REQUEST_BYTES);
        match current {
            Some(chunk) => chunk.push(event),
            None => {
                size = 0;
                chunks.push(vec![event]);
            }
        }
        size += len;
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, events)| WatchResponse {
            events,
            fragment: i < last,
            ..template.clone()
        })
        .collect()
}

/// The event as etcd sends it; copies the previous value only if asked for.
fn to_proto_event(event: &Event, with_prev: bool) -> mvccpb::Event {
    let kind = match event.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(to_proto_kv(event.kv.clone())),
        prev_kv: event
            .prev_kv
            .as_ref()
            .filter(|_| with_prev)
            .cloned()
            .map(to_proto_kv),
    }
}

/// The server side of one watch stream.
struct Session {
    api: EtcdApi,
    /// Who opened the stream (see `Watch::watch`).
    caller: Option<Caller>,
    /// Removes the stream's watchers when the session ends.
    stream: StreamGuard,
    out: mpsc::Sender<Outbound>,
    /// Watch ids in use on this stream.
    ids: HashSet<i64>,
    /// Where server-assigned ids continue (etcd starts at 0).
    next_id: i64,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<WatchRequest>, require_leader: bool) {
        let settings = self.api.watch.clone();
        let start = Instant::now();
        let mut progress = interval_at(
            start + settings.progress_interval,
            settings.progress_interval,
        );
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // As etcd: checked every third of the bound, ended after three misses.
        let check_every = settings.no_leader_after / 3;
        let mut leader_check = interval_at(start + check_every, check_every);
        let mut leaderless_checks = 0;
        // A client that closes its side keeps its watches, as with etcd: the
        // session lasts until the response stream is dropped.
        let mut reading = true;
        loop {
            tokio::select! {
                request = requests.message(), if reading => match request {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) => reading = false,
                    Err(_) => break,
                },
                _ = progress.tick() => settings.hub.notify_progress(self.stream.id),
                _ = leader_check.tick(), if require_leader => {
                    leaderless_checks = if self.api.has_leader() { 0 } else { leaderless_checks + 1 };
                    if leaderless_checks >= 3 {
                        let _ = self.out.send(Outbound::NoLeader).await;
                        break;
                    }
                }
                _ = self.out.closed() => break,
            }
        }
    }

    async fn handle(&mut self, request: WatchRequest) {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) if self.ids.remove(&cancel.watch_id) => {
                self.api.watch.hub.remove((self.stream.id, cancel.watch_id));
                let canceled = Outbound::Canceled {
                    watch_id: cancel.watch_id,
                    revision: self.api.watch.hub.published(),
                };
                let _ = self.out.send(canceled).await;
            }
            // An unknown id: ignored, as etcd does.
            Some(RequestUnion::CancelRequest(_)) => {}
            Some(RequestUnion::ProgressRequest(_)) => {
                self.api.watch.hub.progress(self.stream.id, &self.out).await;
            }
            None => {}
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) {
        let watch_id = match create.watch_id {
            0 => self.free_id(),
            id if self.ids.contains(&id) => {
                let reason = "mvcc: duplicate watch ID provided on the WatchStream".to_string();
                let _ = self
                    .out
                    .send(Outbound::Rejected {
                        watch_id: id,
                        reason,
                    })
                    .await;
                return;
            }
            id => id,
        };
        let key = if create.key.is_empty() {
            vec![0]
        } else {
            create.key
        };
        let range_end = create.range_end;
        if !range_end.is_empty() && range_end != [0] && range_end <= key {
            let reason = "mvcc: watcher range is empty".to_string();
            let _ = self.out.send(Outbound::Rejected { watch_id, reason }).await;
            return;
        }
        let allowed = self.api.read(|sm| {
            sm.authorize_read(self.caller.as_ref(), &key, &range_end)
                .map_err(super::errors::fail_status)
        });
        if let Err(status) = allowed {
            // etcd's answer to any auth failure of a create.
            tracing::debug!(message = status.message(), "watch create refused");
            let reason = "etcdserver: permission denied".to_string();
            let _ = self.out.send(Outbound::Rejected { watch_id, reason }).await;
            return;
        }
        let selector = Selector {
            key,
            range_end,
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
        };
        let options = WatchOptions {
            prev_kv: create.prev_kv,
            fragment: create.fragment,
            progress_notify: create.progress_notify,
        };
        self.ids.insert(watch_id);
        let hub = &self.api.watch.hub;
        hub.add(
            (self.stream.id, watch_id),
            selector,
            options,
            create.start_revision,
            &self.out,
        )
        .await;
    }

    /// The lowest server-assigned id not in use, from where the last one left off.
    fn free_id(&mut self) -> i64 {
        while self.ids.contains(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}
