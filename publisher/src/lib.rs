//! Publishes pagedkv's KV events the way vLLM 0.33.0's `ZmqEventPublisher`
//! does, so cache-aware routers that subscribe to vLLM engines (llm-d's KV
//! cache indexer, NVIDIA Dynamo's KV router) can follow an engine built on
//! pagedkv.
//!
//! - a ZeroMQ PUB socket sends three frames per batch: the topic, an 8-byte
//!   big-endian sequence number counting batches from 0, and the payload
//!   ([`pagedkv::kv_events`]: vLLM's `KVEventBatch` in msgpack);
//! - an optional ROUTER socket serves replays: a request `[empty, start]`
//!   (`start` a big-endian sequence number, as a DEALER or REQ client sends
//!   it) is answered with every buffered batch from `start` on, each as
//!   `[empty, topic, seq, payload]`, then the end marker `[empty, empty, -1
//!   (8 bytes), empty]`; the last [`PublisherConfig::buffer_steps`] batches
//!   are kept for it.
//!
//! The engine calls [`KvEventPublisher::publish`] once per step with the
//! events it drained ([`pagedkv::KvCacheManager::drain_events`], or the
//! reference scheduler's `plan.events` after `Scheduler::step`); a step
//! without events publishes nothing (as in vLLM). The caller's thread only
//! encodes into a recycled buffer and queues it: an I/O thread owns the
//! sockets (the pure-Rust `zeromq` crate on a one-worker tokio runtime).
//!
//! ```
//! use pagedkv::kv_events::EventSource;
//! use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId};
//! use pagedkv_publisher::{KvEventPublisher, PublisherConfig};
//!
//! let config = PublisherConfig {
//!     endpoint: "tcp://127.0.0.1:0".into(), // port 0: any free port
//!     replay_endpoint: Some("tcp://127.0.0.1:0".into()),
//!     ..Default::default()
//! };
//! let mut publisher = KvEventPublisher::new(config, EventSource::default())?;
//! println!("subscribe to {}", publisher.endpoint());
//!
//! let mut kv = KvCacheManager::new(KvCacheConfig {
//!     num_blocks: 64, block_size: 16, enable_prefix_caching: true, enable_kv_events: true,
//!     ..Default::default()
//! })?;
//! let mut events = Vec::new();
//! kv.allocate(SeqId(1), &(0..40).collect::<Vec<u32>>())?; // one engine step
//! kv.drain_ops(&mut BlockOps::default()); // handed to the engine: its blocks are cached
//! kv.drain_events(&mut events);
//! assert_eq!(publisher.publish_now(&events)?, Some(0)); // sequence number 0
//! publisher.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pagedkv::kv_events::{EventSource, EventSourceError, KvEventEncoder};
use pagedkv::KvEvent;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Where and how to publish. The defaults are vLLM's (`tcp://*:5557`, no
/// replay socket, 10,000 batches kept for replay, empty topic), except the
/// queue between the engine and the I/O thread (vLLM: 100,000 batches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// The PUB socket's endpoint, bound: `tcp://HOST:PORT`, `*` for every
    /// interface, port 0 for any free port ([`KvEventPublisher::endpoint`]
    /// says which).
    pub endpoint: String,
    /// The ROUTER socket's endpoint for replays (`None`: no replay).
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay (the oldest is dropped first).
    pub buffer_steps: usize,
    /// Batches queued for the I/O thread before `publish` waits.
    pub max_queue_size: usize,
    /// The first frame of every batch (subscribers filter on its prefix).
    pub topic: String,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            endpoint: "tcp://*:5557".into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            max_queue_size: 10_000,
            topic: String::new(),
        }
    }
}

/// Why the publisher could not start or publish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A setting is unusable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it and what would work.
        reason: String,
    },
    /// The engine's [`EventSource`] is unusable.
    #[error(transparent)]
    Source(#[from] EventSourceError),
    /// A socket could not bind its endpoint.
    #[error("cannot bind {field} {endpoint}: {reason}")]
    Bind {
        /// `endpoint` or `replay_endpoint`.
        field: &'static str,
        /// The endpoint as given.
        endpoint: String,
        /// What the socket library said.
        reason: String,
    },
    /// The I/O thread could not start.
    #[error("cannot start the publisher's I/O thread: {0}")]
    Io(#[from] std::io::Error),
    /// The I/O thread has stopped (it panicked, or the publisher was shut down).
    #[error("the publisher's I/O thread has stopped")]
    Closed,
}

/// The replay end marker's sequence frame: -1 as a signed 64-bit big-endian integer.
pub const END_SEQ: [u8; 8] = (-1i64).to_be_bytes();

enum Msg {
    Batch { seq: u64, payload: Vec<u8> },
    Flush,
    Shutdown,
}

/// Batches kept for replay: (sequence number, payload).
type Ring = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// A running publisher: a PUB socket, an optional replay socket, and the I/O
/// thread that owns them. Dropping it stops the thread (batches still queued
/// are sent first).
pub struct KvEventPublisher {
    encoder: KvEventEncoder,
    next_seq: u64,
    tx: SyncSender<Msg>,
    recycled: Receiver<Vec<u8>>,
    flushed: Receiver<()>,
    io_thread: Option<JoinHandle<()>>,
    endpoint: String,
    replay_endpoint: Option<String>,
}

impl std::fmt::Debug for KvEventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvEventPublisher")
            .field("endpoint", &self.endpoint)
            .field("replay_endpoint", &self.replay_endpoint)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch, the batch timestamp vLLM publishes.
pub fn now_ts() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl PublisherConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), PublishError> {
        let invalid = |field, reason: String| Err(PublishError::InvalidConfig { field, reason });
        if !self.endpoint.starts_with("tcp://") {
            return invalid(
                "endpoint",
                format!(
                    "{:?} is not a tcp:// endpoint; use e.g. tcp://*:5557",
                    self.endpoint
                ),
            );
        }
        if let Some(r) = &self.replay_endpoint {
            if !r.starts_with("tcp://") {
                return invalid(
                    "replay_endpoint",
                    format!("{r:?} is not a tcp:// endpoint; use e.g. tcp://*:5558"),
                );
            }
        }
        if self.max_queue_size == 0 {
            return invalid("max_queue_size", "0 batches; at least 1 (e.g. 10000)".into());
        }
        Ok(())
    }
}

/// `tcp://*:PORT` binds every interface (ZeroMQ's wildcard, vLLM's default).
fn bind_address(endpoint: &str) -> String {
    match endpoint.strip_prefix("tcp://*:") {
        Some(port) => format!("tcp://0.0.0.0:{port}"),
        None => endpoint.to_string(),
    }
}

impl KvEventPublisher {
    /// Binds the sockets and starts the I/O thread. Events are encoded for
    /// `source` (rank, medium, groups, LoRA names).
    ///
    /// Errors: [`PublishError::InvalidConfig`], [`PublishError::Source`],
    /// [`PublishError::Bind`], [`PublishError::Io`].
    pub fn new(config: PublisherConfig, source: EventSource) -> Result<Self, PublishError> {
        config.validate()?;
        let encoder = KvEventEncoder::new(source)?;
        let (tx, rx) = mpsc::sync_channel(config.max_queue_size);
        let (recycle_tx, recycled) = mpsc::sync_channel(4);
        let (flush_tx, flushed) = mpsc::sync_channel(1);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let io_thread = std::thread::Builder::new()
            .name("pagedkv-kv-events".into())
            .spawn(move || io_thread(config, rx, recycle_tx, flush_tx, ready_tx))?;
        let (endpoint, replay_endpoint) = match ready_rx.recv() {
            Ok(Ok(endpoints)) => endpoints,
            Ok(Err(e)) => {
                let _ = io_thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = io_thread.join();
                return Err(PublishError::Closed);
            }
        };
        Ok(KvEventPublisher {
            encoder,
            next_seq: 0,
            tx,
            recycled,
            flushed,
            io_thread: Some(io_thread),
            endpoint,
            replay_endpoint,
        })
    }

    /// The PUB socket's bound endpoint (with the port chosen for port 0).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The replay socket's bound endpoint, if any.
    pub fn replay_endpoint(&self) -> Option<&str> {
        self.replay_endpoint.as_deref()
    }

    /// The sequence number the next published batch gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Publishes one step's events as one batch taken at `ts` (seconds since
    /// the Unix epoch) and returns its sequence number; a step without events
    /// publishes nothing and returns `None`. Waits only when
    /// [`PublisherConfig::max_queue_size`] batches are already queued.
    ///
    /// Once warm, the caller's thread makes no heap allocation here: the
    /// batch is encoded into a buffer the I/O thread handed back after sending
    /// an earlier one (when none is back yet, a new buffer is allocated;
    /// `tests/no_alloc_publish.rs` counts).
    pub fn publish(&mut self, ts: f64, events: &[KvEvent]) -> Result<Option<u64>, PublishError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut payload = self.recycled.try_recv().unwrap_or_default();
        self.encoder.encode_into(ts, events, &mut payload);
        let seq = self.next_seq;
        self.tx
            .send(Msg::Batch { seq, payload })
            .map_err(|_| PublishError::Closed)?;
        self.next_seq += 1;
        Ok(Some(seq))
    }

    /// [`Self::publish`] stamped with the current time.
    pub fn publish_now(&mut self, events: &[KvEvent]) -> Result<Option<u64>, PublishError> {
        self.publish(now_ts(), events)
    }

    /// Waits until every batch published so far has been handed to the PUB
    /// socket and, with a replay socket, is available for replay.
    pub fn flush(&mut self) -> Result<(), PublishError> {
        self.tx.send(Msg::Flush).map_err(|_| PublishError::Closed)?;
        self.flushed.recv().map_err(|_| PublishError::Closed)
    }

    /// Sends what is queued, closes the sockets and stops the I/O thread.
    pub fn shutdown(mut self) -> Result<(), PublishError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), PublishError> {
        let Some(thread) = self.io_thread.take() else {
            return Ok(());
        };
        let _ = self.tx.send(Msg::Shutdown);
        thread.join().map_err(|_| PublishError::Closed)
    }
}

impl Drop for KvEventPublisher {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The I/O thread: binds, reports the endpoints, then sends batches in order
/// until shut down. Replays are served by a task on the same runtime.
fn io_thread(
    config: PublisherConfig,
    rx: Receiver<Msg>,
    recycle: SyncSender<Vec<u8>>,
    flushed: SyncSender<()>,
    ready: SyncSender<Result<(String, Option<String>), PublishError>>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pagedkv-kv-events-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(PublishError::Io(e)));
            return;
        }
    };
    let topic = Bytes::from(config.topic.clone().into_bytes());
    let ring: Option<Ring> = config
        .replay_endpoint
        .as_ref()
        .map(|_| Arc::new(Mutex::new(VecDeque::with_capacity(config.buffer_steps))));
    let bound = runtime.block_on(async {
        let mut publisher = PubSocket::new();
        let endpoint = publisher
            .bind(&bind_address(&config.endpoint))
            .await
            .map_err(|e| PublishError::Bind {
                field: "endpoint",
                endpoint: config.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let replay = match &config.replay_endpoint {
            None => None,
            Some(r) => {
                let mut router = RouterSocket::new();
                let bound = router
                    .bind(&bind_address(r))
                    .await
                    .map_err(|e| PublishError::Bind {
                        field: "replay_endpoint",
                        endpoint: r.clone(),
                        reason: e.to_string(),
                    })?;
                Some((router, bound.to_string()))
            }
        };
        Ok::<_, PublishError>((publisher, endpoint.to_string(), replay))
    });
    let (mut publisher, endpoint, replay) = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let replay_endpoint = replay.as_ref().map(|(_, e)| e.clone());
    if let (Some((router, _)), Some(ring)) = (replay, &ring) {
        runtime.spawn(serve_replays(router, ring.clone(), topic.clone()));
    }
    if ready.send(Ok((endpoint, replay_endpoint))).is_err() {
        return;
    }
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Batch { seq, payload } => {
                let body = Bytes::copy_from_slice(&payload);
                // The caller reuses the buffer for a later batch (or drops it if enough wait).
                let _ = recycle.try_send(payload);
                let frames = vec![
                    topic.clone(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    body.clone(),
                ];
                let message = ZmqMessage::try_from(frames).expect("three frames");
                // PUB drops batches nobody subscribed to, as ZeroMQ does.
                let _ = runtime.block_on(publisher.send(message));
                if let Some(ring) = &ring {
                    let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                    if config.buffer_steps > 0 {
                        if ring.len() == config.buffer_steps {
                            ring.pop_front();
                        }
                        ring.push_back((seq, body));
                    }
                }
            }
            Msg::Flush => {
                let _ = flushed.send(());
            }
            Msg::Shutdown => break,
        }
    }
    drop(publisher);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

/// Answers replay requests, as vLLM's `_service_replay`: a request is
/// `[identity, empty, start]`; the reply is every buffered batch with a
/// sequence number ≥ `start`, then the end marker. Malformed requests are ignored.
async fn serve_replays(mut router: RouterSocket, ring: Ring, topic: Bytes) {
    let mut batches: Vec<(u64, Bytes)> = Vec::new();
    loop {
        let Ok(request) = router.recv().await else { return };
        let frames = request.into_vec();
        let [identity, _, start] = frames.as_slice() else {
            continue;
        };
        if start.len() > 8 {
            continue;
        }
        let start = start.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64);
        batches.clear();
        batches.extend(
            ring.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(seq, _)| *seq >= start)
                .cloned(),
        );
        for (seq, payload) in batches.drain(..) {
            let frames = vec![
                identity.clone(),
                Bytes::new(),
                topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            if router
                .send(ZmqMessage::try_from(frames).expect("five frames"))
                .await
                .is_err()
            {
                break;
            }
        }
        let end = vec![
            identity.clone(),
            Bytes::new(),
            Bytes::new(),
            Bytes::from_static(&END_SEQ),
            Bytes::new(),
        ];
        let _ = router.send(ZmqMessage::try_from(end).expect("five frames")).await;
    }
}
