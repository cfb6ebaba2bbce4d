//! The publisher and a subscriber over loopback TCP on ephemeral ports: the
//! three frames of each batch, gap-free sequence numbers, and replays from a
//! given sequence number ending with the end marker (vLLM's protocol, as a
//! Dynamo or llm-d subscriber speaks it: SUB for live batches, DEALER for replays).

use std::time::Duration;

use pagedkv::kv_events::{EventSource, KvEventEncoder};
use pagedkv::{BlockHash, KvEvent};
use pagedkv_publisher::{KvEventPublisher, PublishError, PublisherConfig, END_SEQ};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

const TOPIC: &str = "kv@engine-0";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The events of batch `i`: distinct per batch.
fn events(i: u64) -> Vec<KvEvent> {
    vec![KvEvent::BlockRemoved {
        block_hashes: vec![BlockHash::from_u128(1000 + i as u128)],
        group: 0,
        tier: pagedkv::CacheTier::Device,
    }]
}

fn ts(i: u64) -> f64 {
    1_700_000_000.0 + i as f64
}

fn expected_payload(i: u64) -> Vec<u8> {
    KvEventEncoder::new(EventSource::default())
        .unwrap()
        .encode(ts(i), &events(i))
        .to_vec()
}

fn frames(m: ZmqMessage) -> Vec<Vec<u8>> {
    m.into_vec().into_iter().map(|b| b.to_vec()).collect()
}

fn seq_of(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame.try_into().expect("an 8-byte sequence number"))
}

async fn recv(sub: &mut impl SocketRecv, wait: Duration) -> Option<Vec<Vec<u8>>> {
    tokio::time::timeout(wait, sub.recv())
        .await
        .ok()
        .map(|m| frames(m.expect("recv")))
}

#[test]
fn live_batches_are_gap_free_and_replays_end_with_the_marker() {
    let rt = runtime();
    let mut publisher = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: Some("tcp://127.0.0.1:0".into()),
            buffer_steps: 6,
            topic: TOPIC.into(),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap();
    assert!(publisher.endpoint().starts_with("tcp://127.0.0.1:"));
    assert!(!publisher.endpoint().ends_with(":0"), "{}", publisher.endpoint());

    let mut sub = SubSocket::new();
    rt.block_on(async {
        sub.connect(publisher.endpoint()).await.unwrap();
        sub.subscribe(TOPIC).await.unwrap();
    });

    // A subscription takes a moment to reach the publisher (ZeroMQ's slow
    // joiner): publish until the subscriber sees a batch.
    let first = loop {
        let i = publisher.next_seq();
        assert!(i < 200, "the subscriber never received a batch");
        assert_eq!(publisher.publish(ts(i), &events(i)).unwrap(), Some(i));
        publisher.flush().unwrap();
        if let Some(f) = rt.block_on(recv(&mut sub, Duration::from_millis(50))) {
            break f;
        }
    };
    // Whatever the subscriber saw first, every later batch arrives, in order.
    let mut live = vec![first];
    for _ in 0..10 {
        let i = publisher.next_seq();
        assert_eq!(publisher.publish(ts(i), &events(i)).unwrap(), Some(i));
    }
    assert_eq!(
        publisher.publish(ts(99), &[]).unwrap(),
        None,
        "a step without events publishes nothing"
    );
    publisher.flush().unwrap();
    let last = publisher.next_seq() - 1;
    while live.len() < 11 {
        let f = rt
            .block_on(recv(&mut sub, Duration::from_secs(5)))
            .expect("a published batch");
        live.push(f);
    }
    let start = seq_of(&live[0][1]);
    for (k, f) in live.iter().enumerate() {
        assert_eq!(f.len(), 3, "topic, sequence number, payload");
        assert_eq!(f[0], TOPIC.as_bytes());
        assert_eq!(seq_of(&f[1]), start + k as u64, "gap-free");
        assert_eq!(f[2], expected_payload(start + k as u64));
    }
    assert_eq!(seq_of(&live[10][1]), last);

    // Replays: the buffered batches from the asked sequence number, then the end marker.
    let mut dealer = DealerSocket::new();
    rt.block_on(dealer.connect(publisher.replay_endpoint().unwrap()))
        .unwrap();
    let mut replay = |from: u64| -> Vec<Vec<Vec<u8>>> {
        rt.block_on(async {
            let request = vec![Vec::new(), from.to_be_bytes().to_vec()];
            let request: Vec<bytes::Bytes> = request.into_iter().map(Into::into).collect();
            dealer.send(ZmqMessage::try_from(request).unwrap()).await.unwrap();
            let mut out = Vec::new();
            loop {
                let f = recv(&mut dealer, Duration::from_secs(5)).await.expect("a reply");
                let end = f[2] == END_SEQ;
                out.push(f);
                if end {
                    return out;
                }
            }
        })
    };
    let got = replay(last - 2);
    assert_eq!(got.len(), 4, "three batches and the end marker");
    for (k, f) in got[..3].iter().enumerate() {
        let seq = last - 2 + k as u64;
        assert_eq!(f.len(), 4, "empty delimiter, topic, sequence number, payload");
        assert!(f[0].is_empty());
        assert_eq!(f[1], TOPIC.as_bytes());
        assert_eq!(seq_of(&f[2]), seq);
        assert_eq!(f[3], expected_payload(seq));
    }
    assert_eq!(got[3], vec![vec![], vec![], END_SEQ.to_vec(), vec![]]);
    assert_eq!(i64::from_be_bytes(END_SEQ), -1);

    // Only the last `buffer_steps` batches are kept.
    let got = replay(0);
    assert_eq!(got.len(), 7);
    let seqs: Vec<u64> = got[..6].iter().map(|f| seq_of(&f[2])).collect();
    assert_eq!(seqs, (last - 5..=last).collect::<Vec<_>>());
    // Nothing from a sequence number not reached yet: the end marker alone.
    assert_eq!(replay(last + 1).len(), 1);

    publisher.shutdown().unwrap();
}

#[test]
fn a_wildcard_endpoint_binds_every_interface() {
    // vLLM's default form, `tcp://*:PORT`.
    let publisher = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://*:0".into(),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap();
    let port = publisher
        .endpoint()
        .strip_prefix("tcp://0.0.0.0:")
        .expect("every interface");
    assert_ne!(port.parse::<u16>().unwrap(), 0);
    let rt = runtime();
    let mut sub = SubSocket::new();
    rt.block_on(sub.connect(&format!("tcp://127.0.0.1:{port}")))
        .unwrap();
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let err = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "ipc:///tmp/x".into(),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("invalid endpoint:"), "{err}");

    let first = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap();
    let taken = first.endpoint().to_string();
    let err = KvEventPublisher::new(
        PublisherConfig {
            endpoint: taken.clone(),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PublishError::Bind { field: "endpoint", endpoint, .. } if *endpoint == taken),
        "{err}"
    );

    let err = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: Some(taken.clone()),
            ..Default::default()
        },
        EventSource::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Bind {
                field: "replay_endpoint",
                ..
            }
        ),
        "{err}"
    );

    let err = KvEventPublisher::new(
        PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            ..Default::default()
        },
        EventSource {
            groups: vec![],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid groups"), "{err}");
}
