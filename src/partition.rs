//! Which partition a household's records are on: the producers' partitioner applied to its
//! id. The processor must know it for homes that have sent nothing yet (a weather warning
//! calls every registered home of its region, once, by the owner of the home's partition).
//! The contract names Kafka's default, murmur2 (the Java client, Kafka Streams, librdkafka's
//! `murmur2_random`); a platform whose producers keep librdkafka's own default
//! (`consistent_random`, CRC-32) sets `kafka.partitioner` to that.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Partitioner {
    /// `murmur2_random` (or `murmur2`): Kafka's default partitioner for keyed records.
    #[default]
    #[serde(rename = "murmur2_random", alias = "murmur2")]
    Murmur2,
    /// `consistent_random` (or `consistent`): librdkafka's default, CRC-32 of the key.
    #[serde(rename = "consistent_random", alias = "consistent")]
    Crc32,
}

impl Partitioner {
    /// The librdkafka `partitioner` property that produces the same placement.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2_random",
            Partitioner::Crc32 => "consistent_random",
        }
    }

    /// The partition of `key` among `partitions` (> 0).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let p = match self {
            Partitioner::Murmur2 => (murmur2(key) as u32 & 0x7fff_ffff) % n,
            Partitioner::Crc32 => crc32(key) % n,
        };
        p as i32
    }
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// CRC-32 (IEEE, zlib's), bit by bit: used once per household, not per record.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_s_own_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        for (key, want) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"hh-00042"), 0x63db_77cd);
    }

    /// librdkafka's own partitioners, through a producer on its mock cluster, put every key
    /// where `Partitioner::partition` says.
    #[test]
    fn the_same_placement_as_librdkafka_s_partitioners() {
        use rdkafka::config::ClientConfig;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("t", 7, 1).unwrap();
        for partitioner in [Partitioner::Murmur2, Partitioner::Crc32] {
            let producer: BaseProducer<_> = ClientConfig::new()
                .set("bootstrap.servers", mock.bootstrap_servers())
                .set("partitioner", partitioner.librdkafka_name())
                .create_with_context(Placement::default())
                .unwrap();
            let keys: Vec<String> = (0..300).map(|i| format!("hh-{i:05}")).collect();
            for k in &keys {
                producer
                    .send(
                        BaseRecord::<str, str, Box<String>>::with_opaque_to(
                            "t",
                            Box::new(k.clone()),
                        )
                        .key(k),
                    )
                    .unwrap();
            }
            producer.flush(std::time::Duration::from_secs(10)).unwrap();
            let placed = producer.context().0.lock().unwrap().clone();
            assert_eq!(placed.len(), keys.len());
            for (key, p) in placed {
                assert_eq!(
                    p,
                    partitioner.partition(key.as_bytes(), 7),
                    "{partitioner:?} {key}"
                );
            }
        }
    }

    #[derive(Default)]
    struct Placement(std::sync::Mutex<Vec<(String, i32)>>);

    impl rdkafka::ClientContext for Placement {}

    impl rdkafka::producer::ProducerContext for Placement {
        type DeliveryOpaque = Box<String>;
        fn delivery(
            &self,
            result: &rdkafka::message::DeliveryResult<'_>,
            key: Self::DeliveryOpaque,
        ) {
            use rdkafka::message::Message;
            let m = result.as_ref().expect("delivered");
            self.0.lock().unwrap().push((*key, m.partition()));
        }
    }
}
