//! The hasher of the engine's in-memory maps (household index, partitions). std's SipHash
//! cost about a fifth of the engine's instructions in the hot-path profile (`valgrind
//! --tool=callgrind` over the bench workload: 35.5 M of 182 M instructions in
//! `BuildHasher::hash_one`), for keys that are short ids and partition numbers. This is the
//! folded multiply of foldhash / wyhash, seeded per process from std's `RandomState`, so a
//! sender of crafted household ids cannot aim collisions at the table without knowing the seed.
//! In memory only: nothing hashed here is written to a checkpoint (`siphash::hash64` is).

use std::hash::{BuildHasher, Hasher};

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

#[derive(Clone, Copy)]
pub(crate) struct Fast {
    seed: u64,
}

impl Default for Fast {
    fn default() -> Self {
        use std::sync::OnceLock;
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            // RandomState is seeded from the OS once per thread and then incremented.
            std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1
        });
        Fast { seed }
    }
}

impl BuildHasher for Fast {
    type Hasher = FastHasher;
    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}

pub(crate) struct FastHasher {
    h: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = fold(self.h ^ w, MUL);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.mix(u64::from_le_bytes(*w));
        }
        if rest.is_empty() {
            return;
        }
        // The last 1 to 7 bytes in one word without a copy to a buffer (a call to `memcpy`
        // per id, a third of the index look-up's instructions): the last eight bytes,
        // overlapping the word before, or for an id shorter than eight, two overlapping
        // loads (or three bytes) as in wyhash. The length goes in too, so "a" and "a\0"
        // differ.
        let last = if let Some(w) = bytes.last_chunk::<8>() {
            u64::from_le_bytes(*w)
        } else if n >= 4 {
            let lo = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
            let hi = u32::from_le_bytes(bytes[n - 4..].try_into().expect("4 bytes"));
            lo as u64 | (hi as u64) << 32
        } else {
            bytes[0] as u64 | (bytes[n / 2] as u64) << 8 | (bytes[n - 1] as u64) << 16
        };
        self.mix(last ^ ((n as u64) << 59));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(i as u64 | 0x100);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(i as u64);
    }

    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.mix(i as u32 as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so the last word's bits reach the top (hashbrown reads the top 7).
        fold(self.h, 0xff51_afd7_ed55_8ccd)
    }
}

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, Fast>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_city_spread_over_the_table() {
        // 100 000 household ids as the registry names them: the top 7 bits (hashbrown's
        // control byte) and the low bits (its bucket) must both be well spread.
        let b = Fast::default();
        let mut top = [0u32; 128];
        let mut low = vec![0u32; 1 << 12];
        let n = 100_000;
        for i in 0..n {
            let h = b.hash_one(format!("hh-{i:06}").as_str());
            top[(h >> 57) as usize] += 1;
            low[(h & 0xfff) as usize] += 1;
        }
        let even_top = n / 128;
        assert!(top
            .iter()
            .all(|&c| c > even_top * 7 / 10 && c < even_top * 13 / 10));
        let even_low = n / 4096;
        assert!(low.iter().all(|&c| c < even_low * 3), "no crowded bucket");
        // Lengths differ: a string and the same with a trailing zero byte hash apart.
        assert_ne!(b.hash_one("a"), b.hash_one("a\0"));
        // Every byte of an id counts, whatever its length (the last word overlaps the one
        // before it, or is made of overlapping loads under eight bytes).
        for len in 1..40 {
            let id: Vec<u8> = (0..len as u8).map(|i| b'a' + i % 26).collect();
            for at in 0..len {
                let mut other = id.clone();
                other[at] ^= 1;
                assert_ne!(
                    b.hash_one(&id),
                    b.hash_one(&other),
                    "{len} bytes, byte {at}"
                );
            }
        }
        assert_ne!(b.hash_one(1i32), b.hash_one(2i32));
    }
}
