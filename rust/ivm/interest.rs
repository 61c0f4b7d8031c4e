//! Which queries a changed row may concern, so that an advance examines only those queries
//! and merely moves the other groups to the new version (see "Advancing" in the module docs of
//! `ivm`).
//!
//! A changed row can matter to a node of a query only if the node holds it (its old value) or
//! its new value may enter one of the node's partitions. The engine records, per query (a
//! query key: its group's number in the high 32 bits, the query's number in its group below):
//!
//! * *holders*: the synced rows the query holds;
//! * *pins*: for nodes whose rows must have given values in given columns: roots and `EXISTS`
//!   subqueries with a top-level `col = literal` / `col IN (…)` condition (the literal values),
//!   and `related` subqueries (their partitions' correlation values);
//! * *always*: tables read by a node without a pin (a root without an equality condition, e.g.
//!   "the newest files"), by a node whose held rows are not synced (below a
//!   `system: "permissions"` subquery), or by a `NOT EXISTS` chain (whose changes may need a
//!   re-hydration): every change of such a table concerns the query.
//!
//! A query is a candidate for a changed row if it holds the row, pins one of the row's new
//! values, or always reads its table. Candidacy is necessary, not sufficient: the query's
//! nodes then decide. Pins use column positions of the plan that registered them; after a
//! schema change every group is examined anyway (its plans are stale), so stale positions only
//! cost precision.

use std::sync::Arc;

use super::value::{part_key, FastMap, FastSet, PartKey, Row};

/// The query key of query `query` of group `group`.
#[must_use]
pub fn query_key(group: u32, query: u32) -> u64 {
    (u64::from(group) << 32) | u64::from(query)
}

/// The group of a query key.
#[must_use]
pub fn group_of(key: u64) -> u32 {
    (key >> 32) as u32
}

/// Registrations by query key (with a count: several nodes may register the same thing). Most
/// rows are held by one query or a few (a list is cheaper to build and to search than a map
/// then); a row held by many, such as one every group syncs, gets a map.
#[derive(Debug)]
enum Queries {
    One { qk: u64, count: u32 },
    /// One item per registration (a query registered twice is listed twice: rare), so that a
    /// registration is a push, not a search of the list.
    Few(Vec<u64>),
    /// Boxed: one per widely held row, and the map of held rows stays small.
    Many(Box<FastMap<u64, u32>>),
}

/// How many registrations a `Queries::Few` holds at most.
const FEW: usize = 32;

impl Queries {
    fn new(qk: u64) -> Self {
        Queries::One { qk, count: 1 }
    }

    fn add(&mut self, g: u64) {
        match self {
            Queries::One { qk, count } if *qk == g => *count += 1,
            Queries::One { qk, count } => {
                let mut few = Vec::with_capacity((*count as usize + 1).max(4));
                few.resize(*count as usize, *qk);
                few.push(g);
                *self = Queries::Few(few);
            }
            Queries::Few(few) if few.len() < FEW => few.push(g),
            Queries::Few(few) => {
                let mut many: FastMap<u64, u32> = FastMap::default();
                for &k in few.iter().chain([&g]) {
                    *many.entry(k).or_insert(0) += 1;
                }
                *self = Queries::Many(Box::new(many));
            }
            Queries::Many(many) => *many.entry(g).or_insert(0) += 1,
        }
    }

    /// Removes one registration of `g`; `true` when none is left at all.
    fn remove(&mut self, g: u64) -> bool {
        match self {
            Queries::One { qk, count } => {
                if *qk == g {
                    *count -= 1;
                }
                *count == 0
            }
            Queries::Few(few) => {
                if let Some(i) = few.iter().position(|&k| k == g) {
                    few.swap_remove(i);
                }
                few.is_empty()
            }
            Queries::Many(many) => {
                if let Some(c) = many.get_mut(&g) {
                    *c -= 1;
                    if *c == 0 {
                        many.remove(&g);
                    }
                }
                many.is_empty()
            }
        }
    }

    fn extend_into(&self, out: &mut FastSet<u64>) {
        match self {
            Queries::One { qk, .. } => {
                out.insert(*qk);
            }
            Queries::Few(few) => out.extend(few.iter().copied()),
            Queries::Many(many) => out.extend(many.keys().copied()),
        }
    }
}

/// Pins of one table on one list of columns.
#[derive(Debug)]
struct PinSet {
    cols: Box<[usize]>,
    values: FastMap<PartKey, Queries>,
}

/// A registration to undo later: `always` on a table, or a pin.
#[derive(Debug, Clone)]
pub enum Reg {
    Always(u32),
    Pin(u32, Box<[usize]>, PartKey),
}

#[derive(Debug, Default)]
pub struct Interest {
    always: FastMap<u32, Queries>,
    pins: FastMap<u32, Vec<PinSet>>,
    /// Per table id, the held rows by key (looked up by the key's text: see [`Interest::held_key`]).
    holders: Vec<FastMap<Arc<str>, Queries>>,
}

impl Interest {
    pub fn register(&mut self, reg: &Reg, qk: u64) {
        match reg {
            Reg::Always(tid) => match self.always.get_mut(tid) {
                Some(g) => g.add(qk),
                None => {
                    self.always.insert(*tid, Queries::new(qk));
                }
            },
            Reg::Pin(tid, cols, key) => {
                let sets = self.pins.entry(*tid).or_default();
                let set = match sets.iter_mut().position(|s| s.cols == *cols) {
                    Some(i) => &mut sets[i],
                    None => {
                        sets.push(PinSet {
                            cols: cols.clone(),
                            values: FastMap::default(),
                        });
                        sets.last_mut().expect("pushed")
                    }
                };
                match set.values.get_mut(key) {
                    Some(g) => g.add(qk),
                    None => {
                        set.values.insert(key.clone(), Queries::new(qk));
                    }
                }
            }
        }
    }

    pub fn unregister(&mut self, reg: &Reg, qk: u64) {
        match reg {
            Reg::Always(tid) => {
                if self.always.get_mut(tid).is_some_and(|g| g.remove(qk)) {
                    self.always.remove(tid);
                }
            }
            Reg::Pin(tid, cols, key) => {
                let Some(sets) = self.pins.get_mut(tid) else { return };
                let Some(i) = sets.iter().position(|s| s.cols == *cols) else { return };
                if sets[i].values.get_mut(key).is_some_and(|g| g.remove(qk)) {
                    sets[i].values.remove(key);
                    if sets[i].values.is_empty() {
                        sets.swap_remove(i);
                        if sets.is_empty() {
                            self.pins.remove(tid);
                        }
                    }
                }
            }
        }
    }

    /// The query starts holding a row. Returns the engine's copy of the row's key, for the
    /// query's state to keep instead of the copy it has just read: the queries holding a row
    /// share one key (one allocation, and comparisons of equal keys end at the pointer).
    pub fn hold(&mut self, tid: u32, key: Arc<str>, qk: u64) -> Arc<str> {
        let held = self.table_holders(tid);
        // A key that is the engine's copy already (see `held_key`) is kept as it is.
        if let Some(queries) = held.get_mut(&*key) {
            queries.add(qk);
            let (engine_key, _) = held.get_key_value(&*key).expect("present above");
            return if Arc::ptr_eq(engine_key, &key) { key } else { engine_key.clone() };
        }
        held.insert(key.clone(), Queries::new(qk));
        key
    }

    /// The engine's copy of a held row's key, so that rows read again (another group hydrating
    /// the same rows) need no key of their own.
    pub fn held_key(&self, tid: u32, key: &str) -> Option<Arc<str>> {
        let (held, _) = self.holders.get(tid as usize)?.get_key_value(key)?;
        Some(held.clone())
    }

    fn table_holders(&mut self, tid: u32) -> &mut FastMap<Arc<str>, Queries> {
        let i = tid as usize;
        if self.holders.len() <= i {
            self.holders.resize_with(i + 1, FastMap::default);
        }
        &mut self.holders[i]
    }

    /// Room for `additional` more held rows of table `tid` (a partition being hydrated).
    pub fn reserve_holders(&mut self, tid: u32, additional: usize) {
        self.table_holders(tid).reserve(additional);
    }

    /// The query stops holding a row.
    pub fn release(&mut self, (tid, key): &(u32, Arc<str>), qk: u64) {
        let Some(held) = self.holders.get_mut(*tid as usize) else { return };
        if held.get_mut(key).is_some_and(|g| g.remove(qk)) {
            held.remove(key);
        }
    }

    /// Whether some query pins values of table `tid` (then a change's new value matters).
    pub fn has_pins(&self, tid: u32) -> bool {
        self.pins.contains_key(&tid)
    }

    /// Adds to `out` the queries a change of row `key` of table `tid` (now `row`, `None` if
    /// deleted) may concern.
    pub fn candidates(&self, tid: u32, key: &Arc<str>, row: Option<&Row>, out: &mut FastSet<u64>) {
        if let Some(g) = self.always.get(&tid) {
            g.extend_into(out);
        }
        if let Some(g) = self.holders.get(tid as usize).and_then(|held| held.get(key)) {
            g.extend_into(out);
        }
        if let (Some(sets), Some(row)) = (self.pins.get(&tid), row) {
            for set in sets {
                if set.cols.iter().any(|&c| c >= row.vals.len()) {
                    continue;
                }
                if let Some(g) = part_key(&row.vals, &set.cols).and_then(|k| set.values.get(&k)) {
                    g.extend_into(out);
                }
            }
        }
    }

    /// Whether nothing is registered (tests).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.always.is_empty() && self.pins.is_empty() && self.holders.iter().all(FastMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(q: &Queries) -> Vec<u64> {
        let mut out = FastSet::default();
        q.extend_into(&mut out);
        let mut v: Vec<u64> = out.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn held_row_entries_stay_small() {
        // One per row held by any query: the map of held rows is the engine's largest.
        assert!(std::mem::size_of::<Queries>() <= 32);
    }

    #[test]
    fn registrations_count_per_query_through_every_representation() {
        let mut q = Queries::new(0);
        q.add(0);
        for g in 1..40u64 {
            q.add(g);
            assert_eq!(keys(&q), (0..=g).collect::<Vec<_>>());
        }
        assert!(matches!(q, Queries::Many(_)));
        // Query 0 registered twice: it stays until both are removed.
        assert!(!q.remove(0));
        assert_eq!(keys(&q)[0], 0);
        for g in 0..39u64 {
            assert!(!q.remove(g));
        }
        assert!(q.remove(39));
        let mut few = Queries::new(7);
        few.add(8);
        assert!(matches!(few, Queries::Few(_)));
        assert!(!few.remove(9), "an unknown query changes nothing");
        few.add(8);
        assert!(!few.remove(7));
        assert!(!few.remove(8), "query 8 registered twice stays until both are removed");
        assert_eq!(keys(&few), vec![8]);
        assert!(few.remove(8));
        // A query registered more than once before the list starts keeps its count.
        let mut twice = Queries::new(1);
        twice.add(1);
        twice.add(2);
        assert!(!twice.remove(1));
        assert_eq!(keys(&twice), vec![1, 2]);
    }
}
