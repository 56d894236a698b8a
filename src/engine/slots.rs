//! The households by slot number, each slot live or vacant.
//!
//! Not `Vec<Option<Household>>`: rustc keeps an `Option`'s "none" in a niche of the value,
//! and of the household's many equally large niches (its fields' own `Option` tags) it chose
//! one in the last cache line. Telling a live slot from a vacant one then read line 9, which
//! nothing else on the hot path reads and the drain's prefetch did not ask for: one more
//! miss on every arriving event and a stall on every released one (a `perf` profile put
//! 91 % of the drain's samples on that one compare). Here a vacant slot holds a household
//! of generation 0 ([`VACANT`]), so liveness is read from line 0, which the caller reads
//! next anyway.

use super::household::Household;

/// The generation of a vacant slot; live households never have it (see [`next`]).
pub(crate) const VACANT: u32 = 0;

/// The generation after `g`, never [`VACANT`].
pub(crate) fn next(g: u32) -> u32 {
    match g.wrapping_add(1) {
        VACANT => VACANT + 1,
        n => n,
    }
}

#[derive(Default)]
pub(crate) struct Slots {
    all: Vec<Household>,
}

impl Slots {
    /// The household in `slot`, if the slot is live.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Household> {
        self.all
            .get(slot as usize)
            .filter(|h| h.generation != VACANT)
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Household> {
        self.all
            .get_mut(slot as usize)
            .filter(|h| h.generation != VACANT)
    }

    /// The slot's household whether live or vacant, for a prefetch only.
    #[inline]
    pub fn raw(&self, slot: u32) -> Option<&Household> {
        self.all.get(slot as usize)
    }

    /// Number of slots, live and vacant.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn capacity(&self) -> usize {
        self.all.capacity()
    }

    /// The live households with their slot numbers, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Household)> {
        self.all
            .iter()
            .enumerate()
            .filter(|(_, h)| h.generation != VACANT)
            .map(|(i, h)| (i as u32, h))
    }

    /// Every slot's household, live or vacant, by slot number.
    pub fn all(&self) -> &[Household] {
        &self.all
    }

    /// The live households.
    pub fn iter(&self) -> impl Iterator<Item = &Household> {
        self.live().map(|(_, h)| h)
    }

    /// Puts `h` (live: its generation is not [`VACANT`]) in a vacant slot, or in a new one.
    pub fn put(&mut self, vacant: Option<u32>, h: Household) -> u32 {
        debug_assert_ne!(h.generation, VACANT);
        match vacant {
            Some(s) => {
                debug_assert_eq!(self.all[s as usize].generation, VACANT);
                self.all[s as usize] = h;
                s
            }
            None => {
                if self.all.len() == self.all.capacity() {
                    // An eighth more, not twice as many: at 640 bytes a household, doubling
                    // would leave up to half the table unused (still amortised O(1)).
                    self.all.reserve_exact(self.all.len() / 8 + 64);
                }
                self.all.push(h);
                (self.all.len() - 1) as u32
            }
        }
    }

    /// Empties `slot`, dropping its household.
    pub fn vacate(&mut self, slot: u32) {
        self.all[slot as usize] = Household::new("", VACANT, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vacant_slot_is_not_live_and_generations_skip_vacant() {
        let mut slots = Slots::default();
        let a = slots.put(None, Household::new("hh-a", 1, 32));
        let b = slots.put(None, Household::new("hh-b", 2, 32));
        slots.vacate(a);
        assert!(slots.get(a).is_none());
        assert!(slots.get_mut(a).is_none());
        assert!(slots.raw(a).is_some());
        assert_eq!(slots.get(b).map(|h| h.id.to_string()), Some("hh-b".into()));
        assert_eq!(slots.iter().count(), 1);
        assert_eq!(slots.put(Some(a), Household::new("hh-c", 3, 32)), a);
        assert_eq!(slots.live().map(|(s, _)| s).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(next(u32::MAX), 1);
        assert_eq!(next(VACANT), 1);
        assert_eq!(next(7), 8);
    }

    #[test]
    fn liveness_is_read_from_the_first_cache_line() {
        assert!(std::mem::offset_of!(Household, generation) + 4 <= 64);
    }
}
