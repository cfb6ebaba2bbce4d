//! Publishes the KV events of a small prefix-caching workload over ZeroMQ, one
//! batch per step, and prints what it published: a manual check against any
//! subscriber (`publisher/interop/subscribe.py` decodes the batches with
//! vLLM's own msgspec types through pyzmq).
//!
//! `cargo run -p pagedkv-publisher --example publish -- [PUB_PORT] [REPLAY_PORT]`
//! (defaults 5557 and 5558); it waits a second for subscribers, publishes 40
//! steps, then keeps serving replays for five seconds.

use std::time::Duration;

use pagedkv::kv_events::EventSource;
use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
use pagedkv_publisher::{KvEventPublisher, PublisherConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(5557), |a| a.parse())?;
    let replay_port: u16 = args.next().map_or(Ok(5558), |a| a.parse())?;
    let mut source = EventSource::default();
    source.lora_names.insert(7, "sql-lora".into());
    let mut publisher = KvEventPublisher::new(
        PublisherConfig {
            endpoint: format!("tcp://127.0.0.1:{port}"),
            replay_endpoint: Some(format!("tcp://127.0.0.1:{replay_port}")),
            ..Default::default()
        },
        source,
    )?;
    println!(
        "publishing on {} (replay {})",
        publisher.endpoint(),
        publisher.replay_endpoint().unwrap_or("-")
    );
    std::thread::sleep(Duration::from_secs(1));

    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 24,
        block_size: 4,
        enable_prefix_caching: true,
        enable_kv_events: true,
        ..Default::default()
    })?;
    let mut events = Vec::new();
    let mut ops = BlockOps::default();
    let system: Vec<u32> = (0..10).collect();
    for step in 0..40u32 {
        let seq = SeqId(step as u64);
        let mut prompt = system.clone();
        prompt.extend(step * 100..step * 100 + 7);
        let keys = PrefixKeys {
            adapter: (step % 5 == 0).then_some(7),
            ..Default::default()
        };
        if kv.allocate_with(seq, &prompt, &keys).is_ok() {
            kv.append(seq, &[1, 2, 3])?;
        }
        if step >= 3 {
            let _ = kv.free(SeqId(step as u64 - 3));
        }
        if step == 30 {
            kv.reset_prefix_cache();
        }
        kv.drain_ops(&mut ops); // the step is handed to the engine
        kv.drain_events(&mut events);
        if let Some(n) = publisher.publish_now(&events)? {
            let kinds: Vec<&str> = events
                .iter()
                .map(|e| match e {
                    pagedkv::KvEvent::BlockStored { .. } => "stored",
                    pagedkv::KvEvent::BlockRemoved { .. } => "removed",
                    _ => "cleared",
                })
                .collect();
            println!("step {step}: batch {n}: {kinds:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    publisher.flush()?;
    std::thread::sleep(Duration::from_secs(5));
    publisher.shutdown()?;
    Ok(())
}
