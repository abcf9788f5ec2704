//! Checkpoints of the engine's state in a compacted Kafka topic (`topics.checkpoints`, one
//! partition), one per consumer group, and reading the latest back at start.
//!
//! A checkpoint is the engine's saved state (`Engine::save_state_into`) and the input
//! *positions* it covers: per consumed partition, the next offset to process. Everything
//! below a position is in the state; nothing at or above it is.
//!
//! Records, all keyed so that compaction keeps exactly the latest of each:
//! - chunks `<group>/<slot>/<i>`: the state cut in pieces of at most `chunk_bytes`, since
//!   brokers refuse large records (1 MB by default in Kafka). Each starts with its
//!   generation number and its write's random id (8 bytes each, big-endian; checkpoints
//!   written before the id existed have the generation only, and no id in the manifest).
//! - then the manifest `<group>` (JSON): generation, slot, chunk count, size, positions.
//!
//! Generations rotate through three slots, and the manifest is written only once every
//! chunk of its generation is acknowledged: a crash in the middle of writing one leaves
//! the previous manifest pointing at its own slot, still whole. Chunks left over from a
//! larger earlier state (indexes past the manifest's count) are ignored.
//!
//! Two writers of one group's checkpoints can overlap: when partitions move, the previous
//! owner's last checkpoint may still be on its way while the new owner restores the one
//! before it. Each writer therefore starts two generations past the checkpoint it read
//! ([`first_generation_after`]): the generation after it, the one a steady writer has in
//! flight, and its slot are left alone, and the restored one's slot stays whole until
//! the new owner's first manifest is written. That does not cover every case (a previous
//! owner whose own first checkpoint after a restore is in flight numbered it as the new
//! owner will), so every write also carries a random id: a chunk of another write in the
//! slot a manifest names is refused (the checkpoint is then unreadable, and the state is
//! rebuilt from the committed offsets), never mixed into the state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::output::{Content, OutRecord};

/// Slots the chunks of successive generations rotate through (see the module docs).
const SLOTS: u64 = 3;

/// The generation of the first checkpoint a writer takes after reading `restored` (the
/// generation of the latest checkpoint on the topic, if any): two past it, so that it
/// shares neither a generation nor a slot with the next write of a steady previous owner
/// still in flight, nor overwrites the slot of the checkpoint it restored.
pub fn first_generation_after(restored: Option<u64>) -> u64 {
    restored.unwrap_or(0) + 2
}

/// A chunk's header: its generation, then its write's id.
const HEADER_BYTES: usize = 16;

/// An id for one checkpoint write, unique in practice: std's hasher keys are random per
/// process and differ for every hasher made.
fn random_write_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How long reading the checkpoint topic may take at start.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the state stands in one consumed partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    /// Every offset below is in the state.
    pub next_offset: i64,
}

/// The latest checkpoint's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    slot: u8,
    chunks: u32,
    pub bytes: u64,
    /// The random id every chunk of this checkpoint carries after its generation; `None`
    /// for checkpoints written before ids (their chunks carry the generation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_id: Option<u64>,
    pub created_at_ms: i64,
    pub positions: Vec<Position>,
    /// A shard's (`scale.shards` > 1): per input partition, the next input offset in the
    /// state. Inputs reach a shard through `topics.repartition`, whose offsets are the
    /// `positions`; these recognise an input sent to it again. Not commit positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Position>,
}

/// A checkpoint read back: its manifest and the state bytes.
#[derive(Debug)]
pub struct Saved {
    pub manifest: Manifest,
    pub state: Vec<u8>,
}

/// Where checkpoints of one consumer group go.
#[derive(Debug, Clone)]
pub struct CheckpointTopic {
    pub topic: String,
    pub group: String,
    pub chunk_bytes: usize,
}

/// Receives an encoded state and cuts it into chunk payloads as it comes (each starting
/// with the generation), so that the state exists once, in the records to publish.
pub struct ChunkWriter {
    generation: u64,
    write_id: u64,
    chunk_bytes: usize,
    chunks: Vec<Vec<u8>>,
    bytes: u64,
}

impl ChunkWriter {
    /// Size of the encoded state so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn new_chunk(&self) -> Vec<u8> {
        let mut chunk = Vec::with_capacity(HEADER_BYTES + self.chunk_bytes);
        chunk.extend_from_slice(&self.generation.to_be_bytes());
        chunk.extend_from_slice(&self.write_id.to_be_bytes());
        chunk
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = |chunk: &Vec<u8>| chunk.len() >= HEADER_BYTES + self.chunk_bytes;
        if self.chunks.last().is_none_or(full) {
            let chunk = self.new_chunk();
            self.chunks.push(chunk);
        }
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        let room = HEADER_BYTES + self.chunk_bytes - chunk.len();
        let taken = buf.len().min(room);
        chunk.extend_from_slice(&buf[..taken]);
        self.bytes += taken as u64;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CheckpointTopic {
    /// Where to encode the state of checkpoint `generation`.
    pub fn writer(&self, generation: u64) -> ChunkWriter {
        ChunkWriter {
            generation,
            write_id: random_write_id(),
            chunk_bytes: self.chunk_bytes.max(1),
            chunks: Vec::new(),
            bytes: 0,
        }
    }

    /// The records of a checkpoint: chunks first, the manifest last (the caller
    /// publishes the manifest only after every chunk is acknowledged).
    pub fn records(
        &self,
        state: ChunkWriter,
        (positions, inputs): (Vec<Position>, Vec<Position>),
        created_at_ms: i64,
    ) -> (Vec<OutRecord>, OutRecord) {
        let (generation, write_id) = (state.generation, state.write_id);
        let slot = (generation % SLOTS) as u8;
        let chunks: Vec<OutRecord> = state
            .chunks
            .into_iter()
            .enumerate()
            .map(|(i, payload)| self.record(format!("{}/{slot}/{i}", self.group), payload))
            .collect();
        let manifest = Manifest {
            generation,
            slot,
            chunks: chunks.len() as u32,
            bytes: state.bytes,
            write_id: Some(write_id),
            created_at_ms,
            positions,
            inputs,
        };
        let manifest = self.record(
            self.group.clone(),
            serde_json::to_vec(&manifest).expect("a manifest serializes"),
        );
        (chunks, manifest)
    }

    fn record(&self, key: String, payload: Vec<u8>) -> OutRecord {
        OutRecord {
            topic: self.topic.clone(),
            partition: None,
            key: Some(key.into_bytes()),
            payload,
            headers: Vec::new(),
            content: Content::Checkpoint,
        }
    }

    /// Reads the topic to its end and returns the group's latest whole checkpoint, if
    /// any. Blocking: call it from a blocking context.
    pub fn load(&self, kafka: &KafkaConfig) -> anyhow::Result<Option<Saved>> {
        let consumer: BaseConsumer = crate::kafka::reader_config(kafka)
            .create()
            .context("creating the checkpoint reader")?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .with_context(|| format!("reading the offsets of {}", self.topic))?;
        if high <= low {
            return Ok(None);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let prefix = format!("{}/", self.group);
        let mut latest: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let deadline = Instant::now() + LOAD_TIMEOUT;
        loop {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the checkpoint topic {} was not read to its end in {LOAD_TIMEOUT:?}",
                    self.topic
                );
                continue;
            };
            let message = message.context("reading the checkpoint topic")?;
            if let Some(key) = message.key() {
                let ours = key == self.group.as_bytes() || key.starts_with(prefix.as_bytes());
                if ours {
                    latest.insert(key.to_vec(), message.payload().unwrap_or_default().to_vec());
                }
            }
            if message.offset() + 1 >= high {
                break;
            }
        }
        let Some(manifest) = latest.get(self.group.as_bytes()) else {
            return Ok(None);
        };
        let manifest: Manifest =
            serde_json::from_slice(manifest).context("reading the checkpoint manifest")?;
        let state = self.state_of(&manifest, &latest)?;
        Ok(Some(Saved { manifest, state }))
    }

    /// The state `manifest` describes, from its chunks among `latest` (the latest record
    /// of each key): refused if one is missing or belongs to another write.
    fn state_of(
        &self,
        manifest: &Manifest,
        latest: &HashMap<Vec<u8>, Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut state = Vec::with_capacity(manifest.bytes as usize);
        for i in 0..manifest.chunks {
            let key = format!("{}/{}/{i}", self.group, manifest.slot);
            let chunk = latest
                .get(key.as_bytes())
                .with_context(|| format!("checkpoint chunk {key} is missing"))?;
            anyhow::ensure!(
                chunk.len() >= 8 && chunk[..8] == manifest.generation.to_be_bytes(),
                "checkpoint chunk {key} belongs to another generation"
            );
            let header = match manifest.write_id {
                Some(id) => {
                    anyhow::ensure!(
                        chunk.len() >= HEADER_BYTES && chunk[8..HEADER_BYTES] == id.to_be_bytes(),
                        "checkpoint chunk {key} belongs to another write of its generation"
                    );
                    HEADER_BYTES
                }
                None => 8,
            };
            state.extend_from_slice(&chunk[header..]);
        }
        anyhow::ensure!(
            state.len() as u64 == manifest.bytes,
            "checkpoint of {} bytes, {} read",
            manifest.bytes,
            state.len()
        );
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write as _;

    #[test]
    fn chunks_carry_their_generation_and_rotate_slots() {
        let topic = CheckpointTopic {
            topic: "dynsig.checkpoints".into(),
            group: "g".into(),
            chunk_bytes: 4,
        };
        let mut state = topic.writer(7);
        // Written in uneven pieces, as an encoder does.
        state.write_all(b"012").unwrap();
        state.write_all(b"3456789").unwrap();
        let (chunks, manifest) = topic.records(state, (Vec::new(), Vec::new()), 0);
        let keys: Vec<_> = chunks
            .iter()
            .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
            .collect();
        assert_eq!(keys, ["g/1/0", "g/1/1", "g/1/2"], "7 % 3");
        assert_eq!(&chunks[2].payload[..8], &7u64.to_be_bytes());
        assert_eq!(&chunks[2].payload[16..], b"89");
        let manifest: Manifest = serde_json::from_slice(&manifest.payload).unwrap();
        assert_eq!((manifest.slot, manifest.chunks, manifest.bytes), (1, 3, 10));
        let id = manifest.write_id.unwrap().to_be_bytes();
        assert!(
            chunks.iter().all(|c| c.payload[8..16] == id),
            "one id per write"
        );
        let slot_of = |generation| {
            let mut state = topic.writer(generation);
            state.write_all(b"x").unwrap();
            let (chunks, _) = topic.records(state, (Vec::new(), Vec::new()), 0);
            String::from_utf8(chunks[0].key.clone().unwrap()).unwrap()
        };
        assert_eq!([slot_of(8), slot_of(9)], ["g/2/0", "g/0/0"]);
    }

    /// Two writes of one generation (two owners of the state, overlapping): a manifest
    /// reads its own write's chunks, and refuses another's in its slot instead of mixing
    /// them in. A manifest without an id (written before ids) reads generation-only
    /// chunks.
    #[test]
    fn a_manifest_reads_its_own_writes_chunks_only() {
        let topic = CheckpointTopic {
            topic: "dynsig.checkpoints".into(),
            group: "g".into(),
            chunk_bytes: 4,
        };
        let write = |state: &[u8]| {
            let mut writer = topic.writer(5);
            writer.write_all(state).unwrap();
            let (chunks, manifest) = topic.records(writer, (Vec::new(), Vec::new()), 0);
            let manifest: Manifest = serde_json::from_slice(&manifest.payload).unwrap();
            let latest: HashMap<Vec<u8>, Vec<u8>> = chunks
                .into_iter()
                .map(|c| (c.key.unwrap(), c.payload))
                .collect();
            (manifest, latest)
        };
        let (first, mut latest) = write(b"first write");
        assert_eq!(topic.state_of(&first, &latest).unwrap(), b"first write");
        let (_, second) = write(b"SECOND WRITE");
        let key = b"g/2/1".to_vec();
        latest.insert(key.clone(), second[&key].clone());
        let error = topic.state_of(&first, &latest).unwrap_err().to_string();
        assert!(error.contains("another write"), "{error}");
        let old = Manifest {
            write_id: None,
            ..first
        };
        let mut old_chunk = 5u64.to_be_bytes().to_vec();
        old_chunk.extend_from_slice(b"old state!!");
        let old_latest = HashMap::from([(b"g/2/0".to_vec(), old_chunk)]);
        let old = Manifest {
            chunks: 1,
            bytes: 11,
            ..old
        };
        assert_eq!(topic.state_of(&old, &old_latest).unwrap(), b"old state!!");
    }

    /// A writer that restored generation `g` while a steady previous owner may still be
    /// writing `g + 1`: it takes neither that generation nor its slot, and leaves `g`'s
    /// slot alone until it has a manifest of its own.
    #[test]
    fn a_new_writer_keeps_clear_of_the_previous_owners_write() {
        let slot = |generation: u64| generation % SLOTS;
        for restored in [1, 2, 41] {
            let first = first_generation_after(Some(restored));
            let in_flight = restored + 1;
            assert!(first > in_flight);
            assert_ne!(slot(first), slot(in_flight), "restored {restored}");
            assert_ne!(slot(first), slot(restored), "restored {restored}");
        }
    }
}
